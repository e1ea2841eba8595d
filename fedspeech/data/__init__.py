"""Keyword datasets: the in-memory corpus, loaders from disk, and client partitions."""

from fedspeech.data.audio import loudest_window, read_clip, read_clips, resample
from fedspeech.data.corpus import CLIP_SAMPLES, SAMPLE_RATE, KeywordCorpus, fix_length
from fedspeech.data.loaders import DATASETS, DatasetLoader, load_dataset
from fedspeech.data.partition import PARTITIONS, partition

__all__ = [
    "CLIP_SAMPLES",
    "DATASETS",
    "PARTITIONS",
    "SAMPLE_RATE",
    "DatasetLoader",
    "KeywordCorpus",
    "fix_length",
    "load_dataset",
    "loudest_window",
    "partition",
    "read_clip",
    "read_clips",
    "resample",
]
