"""Preprocessing: a subject's tracked meshes, images and depth turned into training inputs."""

from npva.preprocess.run import Summary, parse_shard, preprocess_subject

__all__ = ["Summary", "parse_shard", "preprocess_subject"]
