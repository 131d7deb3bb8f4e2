"""IS, FID, KID and precision/recall of one image set against real images, all computed by torch-fidelity.

The features are extracted once per image pool (:mod:`rgm_ray.evaluate.features`) and every run's
subset is scored with torch-fidelity's own feature-level functions, the very functions its
``calculate_metrics`` calls after extraction (a test checks the two agree). Extracting once keeps
R runs over several sets from re-extracting the shared real images R x (sets + 1) times.

Roles follow torch-fidelity: ``generated`` is input1 (its IS is reported; precision = fraction of
generated images inside the real manifold), ``real`` is input2.
"""

from __future__ import annotations

from torch_fidelity.metric_fid import KEY_METRIC_FID, fid_features_to_statistics, fid_statistics_to_metric
from torch_fidelity.metric_isc import KEY_METRIC_ISC_MEAN, isc_features_to_metric
from torch_fidelity.metric_kid import KEY_METRIC_KID_MEAN, kid_features_to_metric
from torch_fidelity.metric_prc import KEY_METRIC_PRECISION, KEY_METRIC_RECALL, prc_features_to_metric

from rgm_ray.evaluate.features import Features

KEY_IS = "is"
KEY_FID = "fid"
KEY_KID = "kid"
KEY_PRECISION = "precision"
KEY_RECALL = "recall"
METRIC_KEYS = (KEY_IS, KEY_FID, KEY_KID, KEY_PRECISION, KEY_RECALL)
HIGHER_IS_BETTER = {KEY_IS: True, KEY_FID: False, KEY_KID: False, KEY_PRECISION: True, KEY_RECALL: True}

KID_SUBSET_SIZE = 1000  # torch-fidelity's default; capped at the set size k
KID_SUBSETS = 100
ISC_SPLITS = 10
PRC_NEIGHBORHOOD = 3
MIN_SET_SIZE = max(ISC_SPLITS, PRC_NEIGHBORHOOD + 1)


def fidelity_metrics(generated: Features, real: Features, *, rng_seed: int,
                     kid_subset_size: int = KID_SUBSET_SIZE, kid_subsets: int = KID_SUBSETS) -> dict[str, float]:
    """IS of ``generated``; FID, KID (mean over torch-fidelity's subsets), precision and recall vs ``real``.

    ``rng_seed`` (< 2**32) seeds torch-fidelity's IS shuffling and KID subset draws.
    """
    n_gen, n_real = len(generated), len(real)
    if min(n_gen, n_real) < MIN_SET_SIZE:
        raise ValueError(f"need at least {MIN_SET_SIZE} images per set, got {n_gen} and {n_real}")
    if not 0 <= rng_seed < 2**32:
        raise ValueError(f"rng_seed must be in [0, 2**32), got {rng_seed}")
    options = {"kid_subsets": kid_subsets, "kid_subset_size": min(kid_subset_size, n_gen, n_real),
               "prc_neighborhood": PRC_NEIGHBORHOOD, "save_cpu_ram": True, "rng_seed": rng_seed,
               "verbose": False}
    isc = isc_features_to_metric(generated.logits, ISC_SPLITS, True, rng_seed)
    fid = fid_statistics_to_metric(fid_features_to_statistics(generated.features),
                                   fid_features_to_statistics(real.features), False)
    kid = kid_features_to_metric(generated.features, real.features, **options)
    prc = prc_features_to_metric(generated.features, real.features, **options)
    return {KEY_IS: isc[KEY_METRIC_ISC_MEAN], KEY_FID: fid[KEY_METRIC_FID], KEY_KID: kid[KEY_METRIC_KID_MEAN],
            KEY_PRECISION: prc[KEY_METRIC_PRECISION], KEY_RECALL: prc[KEY_METRIC_RECALL]}
