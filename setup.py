"""The one build setting pyproject.toml cannot hold: the packages, found as before plus the sweep configs.

``tune_configs/`` stays at the repository root (where people edit the sweeps) but ships inside the
package as ``rgm_ray/tune_configs``, so a wheel has them; setuptools maps a directory to a package only
in a packages list, and a list written out by hand would miss the next new package, so it is found here.
``rgm_ray.tune.config.shipped_configs_dir`` finds them in both layouts.
"""

from setuptools import find_namespace_packages, setup

setup(packages=[*find_namespace_packages(include=["rgm_ray*", "pipelines*"]), "rgm_ray.tune_configs"],
      package_dir={"rgm_ray.tune_configs": "tune_configs"})
