"""The MLflow pyfunc model of a training run, logged as code (MLflow's "models from code": this file is stored with
the model and run when it is loaded or served, so loading unpickles nothing): predictions through our Predictor,
as ``sedensenet predict`` makes them."""

from __future__ import annotations

from typing import Any

from mlflow.models import set_model
from mlflow.pyfunc import PythonModel

from sedensenet.config import InferenceSettings
from sedensenet.tracking import OUTPUT_COLUMNS


class SedensenetModel(PythonModel):
    """The pyfunc model: ``predict`` runs our :class:`~sedensenet.engine.predictor.Predictor` with the settings of
    ``sedensenet predict`` (:class:`~sedensenet.config.InferenceSettings`' defaults, stored in the model config)."""

    def load_context(self, context: Any) -> None:
        from sedensenet.engine.predictor import Predictor

        config = dict(context.model_config or {})
        self.top_k = int(config.pop("top_k", 1))
        self.predictor = Predictor.load(context.artifacts["checkpoint"], InferenceSettings(**config))

    def predict(self, context: Any, model_input, params: dict[str, Any] | None = None) -> Any:  # noqa: ANN001
        # model_input: a DataFrame with a ``path`` column (no type hint: MLflow reads hints as a schema)
        import pandas as pd

        from sedensenet.engine.predictor import probabilities_to_rows

        paths = [str(p) for p in model_input["path"]]
        preds = self.predictor.predict_files(paths, top_k=self.top_k) if paths else []
        rows = probabilities_to_rows(preds)
        for row, p in zip(rows, preds, strict=True):
            row["probability"] = float("nan") if p.probability is None else float(p.probability)
        return pd.DataFrame(rows, columns=list(OUTPUT_COLUMNS))


set_model(SedensenetModel())
