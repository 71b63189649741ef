"""Files generated from the core's declarations; tests fail while either is out of date.

mlproject.py writes `MLproject` (`python -m focusml.generate.mlproject > MLproject`); catalog.py writes
catalog.json beside itself (`python -m focusml.generate.catalog`): the listings and method options the
CLI shows without importing torch (`catalog.listing`). `make mlproject` runs both. The core never
imports this package.
"""
