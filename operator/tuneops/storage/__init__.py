"""Artifact storage: URIs (file, pvc, s3, hf), atomic publication, manifests with digests, reuse."""

from tuneops.storage.artifacts import Output, fetch, publish_dir, workdir
from tuneops.storage.manifest import MANIFEST_NAME, Manifest, digest_of, read_manifest, reuse_key, verify
from tuneops.storage.uri import ArtifactURI, InputError, InvalidURIError, parse_uri

__all__ = [
    "MANIFEST_NAME",
    "ArtifactURI",
    "InputError",
    "InvalidURIError",
    "Manifest",
    "Output",
    "digest_of",
    "fetch",
    "parse_uri",
    "publish_dir",
    "read_manifest",
    "reuse_key",
    "verify",
    "workdir",
]
