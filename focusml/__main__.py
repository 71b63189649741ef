from focusml.cli import main

main()
