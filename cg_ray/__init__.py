"""cg_ray: distributed training of CityGuessr video geolocalization models on Ray."""

__version__ = "0.1.0"
