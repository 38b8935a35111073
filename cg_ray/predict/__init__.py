"""Using trained models: a checkpoint over a prepared split (`evaluate`), single clips
(`predictor`), thousands of clips with Ray Data (`batch`), the MLflow model registry
(`registry`) and the online endpoint (`serve`)."""
