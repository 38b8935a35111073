"""The CityGuessr network as plain nn.Modules: no Ray, no files, no MLflow."""
