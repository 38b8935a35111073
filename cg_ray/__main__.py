import sys

from cg_ray.cli import main

sys.exit(main())
