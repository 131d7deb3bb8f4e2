"""rgm_ray: resampling generative models with likelihood-free importance weights, on Ray.

Stages, in import order (a stage imports only from stages before it):
``data`` -> ``store`` -> ``models`` -> ``generate`` -> ``weigh`` -> ``resample``
-> ``evaluate`` -> ``ssl`` / ``tune`` -> ``report``. ``cli`` and ``pipelines`` wire them together.
"""

__version__ = "0.1.0"
