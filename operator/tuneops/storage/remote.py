"""Transfers to and from S3 (boto3) and the Hugging Face Hub (huggingface_hub), with retries and backoff."""

from __future__ import annotations

import functools
import json
import logging
import os
import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from tuneops.storage import credentials
from tuneops.storage.manifest import MANIFEST_NAME, Manifest, ManifestError
from tuneops.storage.uri import ArtifactURI, InputError

log = logging.getLogger("tuneops.storage")
T = TypeVar("T")

RETRIES = int(os.environ.get("TUNEOPS_RETRIES", "5"))
BACKOFF_S = float(os.environ.get("TUNEOPS_BACKOFF_S", "1.0"))


def _status(exc: BaseException) -> int | None:
    """HTTP status of a boto3 or huggingface_hub (httpx) error, if it carries one."""
    resp = getattr(exc, "response", None)
    if resp is None:
        return None
    status = getattr(resp, "status_code", None)
    if status is None and isinstance(resp, dict):
        status = resp.get("ResponseMetadata", {}).get("HTTPStatusCode")
    return status if isinstance(status, int) else None


def _transient(exc: BaseException) -> bool:
    """5xx, 429, timeouts and dropped connections are worth another try; 4xx (bad name, no access) is not."""
    status = _status(exc)
    if isinstance(status, int):
        return status >= 500 or status == 429
    name = type(exc).__name__.lower()
    return any(w in name for w in ("timeout", "connect", "protocol", "readerror", "remotedisconnected"))


def with_retries(what: str, fn: Callable[[], T], retries: int | None = None) -> T:
    """Calls fn, retrying transient failures with exponential backoff and jitter."""
    attempts = (RETRIES if retries is None else retries) + 1
    for i in range(attempts):
        try:
            return fn()
        except Exception as exc:
            if i == attempts - 1 or not _transient(exc):
                raise
            delay = BACKOFF_S * (2**i) * (0.5 + random.random() / 2)
            log.warning(
                "%s failed (%s: %s); retry %d/%d in %.1fs",
                what,
                type(exc).__name__,
                exc,
                i + 1,
                attempts - 1,
                delay,
            )
            time.sleep(delay)
    raise AssertionError("unreachable")


# ---------------------------------------------------------------------------------------------------- S3


def _s3(uri: ArtifactURI) -> Any:
    """A client with the credentials of the source `uri` belongs to (see storage.credentials)."""
    import boto3
    from botocore.config import Config

    # Without a source's own endpoint, AWS_ENDPOINT_URL / AWS_ENDPOINT_URL_S3 select a non-AWS server (MinIO,
    # a local test server); boto3 reads them.
    return boto3.client(
        "s3",
        config=Config(retries={"max_attempts": 5, "mode": "standard"}),
        **credentials.s3_client_args(uri.raw),
    )


def s3_download(uri: ArtifactURI, dest: Path) -> Path:
    """Downloads every object under s3://bucket/prefix/ (or the single object) into dest."""
    client = _s3(uri)
    prefix = uri.key
    keys: list[tuple[str, int]] = []
    paginator = client.get_paginator("list_objects_v2")
    list_prefix = prefix + "/" if prefix else ""
    for page in with_retries(
        f"list {uri.raw}", lambda: list(paginator.paginate(Bucket=uri.bucket, Prefix=list_prefix))
    ):
        for obj in page.get("Contents", []):
            keys.append((obj["Key"], int(obj["Size"])))
    dest.mkdir(parents=True, exist_ok=True)
    if not keys and prefix:
        # A single object (e.g. s3://bucket/models/m-Q4_K_M.gguf or a calibration file).
        target = dest / Path(prefix).name
        try:
            with_retries(f"download {uri.raw}", lambda: client.download_file(uri.bucket, prefix, str(target)))
        except Exception as exc:
            if _status(exc) == 404:
                raise InputError(f"{uri.raw}: no such object or prefix in bucket {uri.bucket}") from None
            raise
        return target
    if not keys:
        raise InputError(f"{uri.raw}: bucket {uri.bucket} is empty")
    for key, size in keys:
        rel = key[len(list_prefix) :]
        if not rel or ".." in Path(rel).parts:
            continue
        target = dest / rel
        if target.is_file() and target.stat().st_size == size:
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        part = target.with_name(target.name + ".part")
        with_retries(
            f"download s3://{uri.bucket}/{key}",
            functools.partial(client.download_file, uri.bucket, key, str(part)),
        )
        part.replace(target)
    log.info("downloaded %d objects from %s", len(keys), uri.raw)
    return dest


def s3_read_manifest(uri: ArtifactURI) -> Manifest | None:
    client = _s3(uri)
    key = f"{uri.key}/{MANIFEST_NAME}" if uri.key else MANIFEST_NAME
    try:
        body = client.get_object(Bucket=uri.bucket, Key=key)["Body"].read()
        return Manifest.from_json(json.loads(body))
    except (ValueError, ManifestError):
        return None
    except Exception as exc:
        code = str(getattr(exc, "response", {}).get("Error", {}).get("Code", ""))
        if code in ("NoSuchKey", "404", "NoSuchBucket"):
            return None
        raise


def s3_complete(uri: ArtifactURI, manifest: Manifest) -> bool:
    """True when every file of the manifest exists under the prefix with the listed size."""
    client = _s3(uri)
    prefix = uri.key + "/" if uri.key else ""
    sizes: dict[str, int] = {}
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=uri.bucket, Prefix=prefix):
        for obj in page.get("Contents", []):
            sizes[obj["Key"][len(prefix) :]] = int(obj["Size"])
    return all(sizes.get(str(f["path"])) == int(f["size"]) for f in manifest.files)


def s3_upload(local: Path, uri: ArtifactURI, manifest: Manifest) -> None:
    """Uploads the files, then the manifest last: the manifest is the commit point readers check.

    Objects of a previous artifact under the same prefix that the new one does not have are removed after
    the new manifest is in place, so a reader never sees a manifest without its files.
    """
    client = _s3(uri)
    prefix = uri.key + "/" if uri.key else ""
    old: list[str] = []
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=uri.bucket, Prefix=prefix):
        old += [obj["Key"] for obj in page.get("Contents", [])]
    for f in manifest.files:
        rel = str(f["path"])
        with_retries(
            f"upload {rel}",
            functools.partial(client.upload_file, str(local / rel), uri.bucket, prefix + rel),
        )
    with_retries(
        "upload manifest",
        lambda: client.upload_file(str(local / MANIFEST_NAME), uri.bucket, prefix + MANIFEST_NAME),
    )
    keep = {prefix + str(f["path"]) for f in manifest.files} | {prefix + MANIFEST_NAME}
    stale = [k for k in old if k not in keep]
    for i in range(0, len(stale), 1000):
        client.delete_objects(
            Bucket=uri.bucket, Delete={"Objects": [{"Key": k} for k in stale[i : i + 1000]]}
        )
    log.info("uploaded %d files to %s", len(manifest.files), uri.raw)


# ---------------------------------------------------------------------------------------------------- Hub


def _hf_endpoint() -> str | None:
    return os.environ.get("HF_ENDPOINT") or None


def _hf_token(uri: ArtifactURI) -> str | None:
    return credentials.hf_token(uri.raw)


def hf_download(uri: ArtifactURI, dest: Path) -> Path:
    """Downloads a Hub repo (or one file of it) at a revision into dest; HF_ENDPOINT and HF_TOKEN are honoured."""
    from huggingface_hub import hf_hub_download, snapshot_download
    from huggingface_hub.errors import EntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError

    dest.mkdir(parents=True, exist_ok=True)
    try:
        if uri.subpath:
            path = with_retries(
                f"download {uri.raw}",
                lambda: hf_hub_download(
                    repo_id=uri.repo,
                    filename=uri.subpath,
                    revision=uri.revision,
                    local_dir=str(dest),
                    token=_hf_token(uri),
                    endpoint=_hf_endpoint(),
                ),
            )
        else:
            path = with_retries(
                f"download {uri.raw}",
                lambda: snapshot_download(
                    repo_id=uri.repo,
                    revision=uri.revision,
                    local_dir=str(dest),
                    token=_hf_token(uri),
                    endpoint=_hf_endpoint(),
                    max_workers=4,
                ),
            )
    except RepositoryNotFoundError:
        raise InputError(f"{uri.raw}: repository {uri.repo} not found (or the token has no access)") from None
    except RevisionNotFoundError:
        raise InputError(f"{uri.raw}: revision {uri.revision} not found") from None
    except EntryNotFoundError:
        raise InputError(f"{uri.raw}: file {uri.subpath} not found") from None
    log.info("downloaded %s", uri.raw)
    return Path(path)


def hf_read_manifest(uri: ArtifactURI) -> Manifest | None:
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError

    try:
        path = hf_hub_download(
            repo_id=uri.repo,
            filename=MANIFEST_NAME,
            revision=uri.revision,
            token=_hf_token(uri),
            endpoint=_hf_endpoint(),
        )
        return Manifest.from_json(json.loads(Path(path).read_text()))
    except (EntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError, ValueError, ManifestError):
        return None


def hf_upload(local: Path, uri: ArtifactURI) -> None:
    """One commit with all files (a Hub commit is atomic: readers see the old or the new artifact)."""
    from huggingface_hub import HfApi

    api = HfApi(endpoint=_hf_endpoint(), token=_hf_token(uri))
    with_retries(f"create {uri.repo}", lambda: api.create_repo(uri.repo, exist_ok=True, private=True))
    if uri.revision != "main":
        with_retries(
            f"create branch {uri.revision}",
            lambda: api.create_branch(uri.repo, branch=uri.revision, exist_ok=True),
        )
    with_retries(
        f"upload {uri.raw}",
        lambda: api.upload_folder(
            repo_id=uri.repo,
            folder_path=str(local),
            revision=uri.revision,
            commit_message="tuneops artifact",
            delete_patterns=["*"],
        ),
    )
