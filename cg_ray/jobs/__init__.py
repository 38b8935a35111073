"""cg_ray jobs on a Ray cluster: `cg-ray submit` (`submit`: a command as a Ray job, with the local
files it names; followed to its end, submitted again when lost), `cg-ray jobs list | logs | stop |
status` (`listing`), and what both share (`cluster`: the address, Ray's auth token, one-line
errors; `files`: the runtime_env and the files that travel with a job)."""

# The cg-ray commands that run as jobs (each has its entry point jobs/<name>.py in a checkout).
JOBS = ("pack", "scenes", "text", "train", "tune", "evaluate", "serve")
