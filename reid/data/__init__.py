"""Datasets, image loading and caching, augmentation pipelines and samplers for re-id training."""

from reid.data.cache import DecodedImages, DiskCache, RamCache
from reid.data.folders import IdentityFolders
from reid.data.images import decode_resized, filter_readable, find_unreadable, read_image
from reid.data.market1501 import Market1501
from reid.data.pipeline import AugmentOnDevice, BatchTransform, EvalImages, NormalizeOnDevice, TrainImages
from reid.data.records import DatasetError, ImageRecord, ReidSplits
from reid.data.sampler import DrawKey, KeyedPKSampler, PKSampler
from reid.data.synthetic import SyntheticReID
from reid.data.transforms import Augmentation, augment_batch, augment_image, eval_transform

__all__ = [
    "AugmentOnDevice",
    "Augmentation",
    "BatchTransform",
    "DatasetError",
    "DecodedImages",
    "DiskCache",
    "DrawKey",
    "EvalImages",
    "IdentityFolders",
    "ImageRecord",
    "KeyedPKSampler",
    "Market1501",
    "NormalizeOnDevice",
    "PKSampler",
    "RamCache",
    "ReidSplits",
    "SyntheticReID",
    "TrainImages",
    "augment_batch",
    "augment_image",
    "decode_resized",
    "eval_transform",
    "filter_readable",
    "find_unreadable",
    "read_image",
]
