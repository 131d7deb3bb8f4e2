"""The sample store: Parquet shards + ``_manifest.json``, the contract between all stages."""

from rgm_ray.store.atomic import ArtefactExistsError, atomic_directory, atomic_path, atomic_write_json
from rgm_ray.store.export import dataset_source, export_dataset
from rgm_ray.store.hf import to_hf_dataset
from rgm_ray.store.importing import ImportResult, ImportSpec, import_samples
from rgm_ray.store.layout import MANIFEST_NAME
from rgm_ray.store.manifest import Manifest, ManifestError, ShardInfo, manifest_digest, provenance, read_manifest
from rgm_ray.store.reader import SampleSet
from rgm_ray.store.schema import (COPIES, IMAGE, LABEL, LOG_WEIGHT, SAMPLE_ID, UNLABELED,
                                  decode_images, make_table)
from rgm_ray.store.verify import Problem, verify_sample_set
from rgm_ray.store.writer import SampleSetWriter, finish_sample_set, shard_name, write_shard

__all__ = ["ArtefactExistsError", "COPIES", "IMAGE", "ImportResult", "ImportSpec", "LABEL", "LOG_WEIGHT",
           "MANIFEST_NAME", "Manifest", "ManifestError", "Problem", "SAMPLE_ID", "SampleSet", "SampleSetWriter",
           "ShardInfo", "UNLABELED",
           "atomic_directory", "atomic_path", "atomic_write_json", "dataset_source", "decode_images",
           "export_dataset", "finish_sample_set", "import_samples", "make_table", "manifest_digest", "provenance",
           "read_manifest", "shard_name", "to_hf_dataset", "verify_sample_set", "write_shard"]
