"""Semi-supervised classification with the semantic loss on generated images (stage ssl)."""

from rgm_ray.ssl.labels import balanced_label_subset, split_train_val
from rgm_ray.ssl.objective import ssl_loss
from rgm_ray.models.resnet import ResNet, ResNetConfig, preprocess
from rgm_ray.ssl.semantic_loss import semantic_loss

__all__ = ["ResNet", "ResNetConfig", "balanced_label_subset", "preprocess", "semantic_loss",
           "split_train_val", "ssl_loss"]

# The training loop, unlabelled sources and the stage (issue 9).
from rgm_ray.ssl.sources import SourceSpec, UnlabeledPool, load_sample_set_pool, parse_source
from rgm_ray.ssl.stage import RealSplits, load_ssl_data, run_ssl, select_indices
from rgm_ray.ssl.trainer import IndexStream, SSLConfig, SSLData, evaluate, parse_labels, train_ssl

__all__ += ["IndexStream", "RealSplits", "SSLConfig", "SSLData", "SourceSpec", "UnlabeledPool", "evaluate",
            "load_sample_set_pool", "load_ssl_data", "parse_labels", "parse_source", "run_ssl", "select_indices",
            "train_ssl"]
