"""The logged model's code (MLflow models-from-code): `log.log_model` logs this file as `python_model`.

MLflow runs it when the model loads, with focusml's package on `sys.path` (`code_paths`); the
class names and the architecture arrive as `model_config`, the weights as an artifact.
"""

import mlflow

from focusml.tracking.pyfunc import CamClassifier

mlflow.models.set_model(CamClassifier())
