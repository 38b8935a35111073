from cg_ray.cli import run

run()
