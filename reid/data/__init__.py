"""Datasets, image loading, transforms and samplers for re-id training."""

from reid.data.folders import IdentityFolders
from reid.data.images import ImageDataset, filter_readable, find_unreadable, read_image
from reid.data.market1501 import Market1501
from reid.data.records import DatasetError, ImageRecord, ReidSplits
from reid.data.sampler import PKSampler
from reid.data.synthetic import SyntheticReID
from reid.data.transforms import build_transforms

__all__ = [
    "DatasetError",
    "IdentityFolders",
    "ImageDataset",
    "ImageRecord",
    "Market1501",
    "PKSampler",
    "ReidSplits",
    "SyntheticReID",
    "build_transforms",
    "filter_readable",
    "find_unreadable",
    "read_image",
]
