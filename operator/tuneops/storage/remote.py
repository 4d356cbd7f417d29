"""Transfers to and from S3 (boto3) and the Hugging Face Hub (huggingface_hub), with retries and backoff."""

from __future__ import annotations

import functools
import json
import logging
import os
import random
import re
import time
from collections.abc import Callable
from pathlib import Path, PurePosixPath
from typing import Any, TypeVar

from tuneops.storage import credentials
from tuneops.storage.manifest import MANIFEST_NAME, Manifest, ManifestError
from tuneops.storage.safety import inside, safe_relative
from tuneops.storage.uri import ArtifactURI, InputError, parse_uri

log = logging.getLogger("tuneops.storage")
T = TypeVar("T")

RETRIES = int(os.environ.get("TUNEOPS_RETRIES", "5"))
BACKOFF_S = float(os.environ.get("TUNEOPS_BACKOFF_S", "1.0"))
# An S3 output prefix names its current artifact folder in this object (see s3_upload).
POINTER_NAME = "tuneops-current.json"
POINTER_KIND = "TuneopsArtifactPointer"
_CONTENT_DIR = re.compile(r"[0-9a-f]{16}")


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


def _list(client: Any, uri: ArtifactURI, prefix: str) -> list[tuple[str, int]]:
    paginator = client.get_paginator("list_objects_v2")
    pages = with_retries(
        f"list {uri.raw}", lambda: list(paginator.paginate(Bucket=uri.bucket, Prefix=prefix))
    )
    return [(obj["Key"], int(obj["Size"])) for page in pages for obj in page.get("Contents", [])]


def _get_json(client: Any, bucket: str, key: str) -> Any:
    """The JSON object at key, or None when there is none (or it is not JSON)."""
    try:
        body = client.get_object(Bucket=bucket, Key=key)["Body"].read(1 << 24)
        return json.loads(body)
    except ValueError:
        return None
    except Exception as exc:
        code = str(getattr(exc, "response", {}).get("Error", {}).get("Code", ""))
        if code in ("NoSuchKey", "404", "NoSuchBucket"):
            return None
        raise


def _key(uri: ArtifactURI, name: str) -> str:
    return f"{uri.key}/{name}" if uri.key else name


def content_dir(digest: str) -> str:
    """The folder an S3 artifact is published in under its output prefix: the first 16 hex digits of its digest."""
    return digest.removeprefix("sha256:")[:16]


def s3_current(uri: ArtifactURI) -> ArtifactURI | None:
    """Where the output prefix's current artifact lives (its pointer, written after the artifact), if any."""
    data = _get_json(_s3(uri), uri.bucket, _key(uri, POINTER_NAME))
    if not isinstance(data, dict) or data.get("kind") != POINTER_KIND:
        return None
    where = str(data.get("path", ""))
    safe_relative(where, f"{uri.raw}: {POINTER_NAME}")
    return uri.child(where)


def s3_download(uri: ArtifactURI, dest: Path) -> Path:
    """Downloads every object under s3://bucket/prefix/ (or the single object) into dest.

    An output prefix tuneops publishes to holds one folder per artifact and a pointer to the current one: the
    pointed folder is what is downloaded. Keys that would land outside dest (`prefix//etc/x`, `..`) are refused.
    """
    current = s3_current(uri) if uri.key else None
    if current is not None:
        log.info("%s: current artifact at %s", uri.raw, current.raw)
        uri = current
    elif "/" in uri.key and s3_read_manifest(uri) is None:
        parent = parse_uri(uri.raw.rsplit("/", 1)[0])
        if _CONTENT_DIR.fullmatch(uri.name) and s3_current(parent) is not None:
            raise InputError(
                f"{uri.raw}: an artifact folder of {parent.raw} without its manifest (an upload that did not"
                " complete); refused"
            )
    client = _s3(uri)
    prefix = uri.key
    list_prefix = prefix + "/" if prefix else ""
    keys = _list(client, uri, list_prefix)
    dest.mkdir(parents=True, exist_ok=True)
    if not keys and prefix:
        # A single object (e.g. s3://bucket/models/m-Q4_K_M.gguf or a calibration file).
        target = inside(dest, PurePosixPath(prefix).name, uri.raw)
        try:
            with_retries(f"download {uri.raw}", lambda: client.download_file(uri.bucket, prefix, str(target)))
        except Exception as exc:
            if _status(exc) == 404:
                raise InputError(f"{uri.raw}: no such object or prefix in bucket {uri.bucket}") from None
            raise
        return target
    if not keys:
        raise InputError(f"{uri.raw}: bucket {uri.bucket} is empty")
    wanted: list[tuple[str, Path, int]] = []
    for key, size in keys:
        rel = key[len(list_prefix) :]
        if (not rel or rel.endswith("/")) and size == 0:
            continue  # a console's "folder" marker
        # Checked for every key before anything is written: one hostile key refuses the whole input.
        wanted.append((key, inside(dest, rel, f"{uri.raw}: object key {key!r}"), size))
    for key, target, size in wanted:
        if target.is_file() and not target.is_symlink() and target.stat().st_size == size:
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        part = target.with_name(target.name + ".part")
        with_retries(
            f"download s3://{uri.bucket}/{key}",
            functools.partial(client.download_file, uri.bucket, key, str(part)),
        )
        part.replace(target)
    log.info("downloaded %d objects from %s", len(wanted), uri.raw)
    return dest


def s3_read_manifest(uri: ArtifactURI) -> Manifest | None:
    data = _get_json(_s3(uri), uri.bucket, _key(uri, MANIFEST_NAME))
    if data is None:
        return None
    try:
        return Manifest.from_json(data)
    except (ManifestError, AttributeError, TypeError, ValueError):
        return None


def s3_complete(uri: ArtifactURI, manifest: Manifest) -> bool:
    """True when every file of the manifest exists under the prefix with the listed size."""
    client = _s3(uri)
    prefix = uri.key + "/" if uri.key else ""
    sizes: dict[str, int] = {}
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=uri.bucket, Prefix=prefix):
        for obj in page.get("Contents", []):
            sizes[obj["Key"][len(prefix) :]] = int(obj["Size"])
    return all(sizes.get(str(f["path"])) == int(f["size"]) for f in manifest.files)


def s3_published(uri: ArtifactURI) -> Manifest | None:
    """The output's current artifact: the pointed folder's manifest, when it is there with all its files."""
    current = s3_current(uri)
    if current is None:
        return None
    m = s3_read_manifest(current)
    if m is None or content_dir(m.digest) != current.name or not s3_complete(current, m):
        return None
    return m


def s3_upload(local: Path, uri: ArtifactURI, manifest: Manifest) -> ArtifactURI:
    """Publishes under `<prefix>/<digest16>/`: the files, then that folder's manifest, then the prefix's pointer.

    Nothing is overwritten in place: a run killed mid-upload leaves a folder without a manifest, which no
    reader trusts, and the previous artifact (its folder, and the pointer to it) stays as it was. Folders of
    earlier artifacts are kept: a service may still serve one (remove them with a bucket lifecycle rule).
    """
    client = _s3(uri)
    target = uri.child(content_dir(manifest.digest))
    prefix = target.key + "/"
    found = s3_read_manifest(target)
    if found is None or found.digest != manifest.digest or not s3_complete(target, found):
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
    pointer = json.dumps({"kind": POINTER_KIND, "digest": manifest.digest, "path": target.name}).encode()
    with_retries(
        "upload pointer",
        lambda: client.put_object(Bucket=uri.bucket, Key=_key(uri, POINTER_NAME), Body=pointer),
    )
    log.info("uploaded %d files to %s", len(manifest.files), target.raw)
    return target


# ---------------------------------------------------------------------------------------------------- Hub


def _hf_endpoint() -> str | None:
    return os.environ.get("HF_ENDPOINT") or None


def _hf_token(uri: ArtifactURI) -> str | None:
    return credentials.hf_token(uri.raw)


def _check_hf_names(uri: ArtifactURI, dest: Path) -> None:
    """The repository's file list, checked before anything is written: a name that would land outside dest
    refuses the whole download."""
    from huggingface_hub import HfApi

    api = HfApi(endpoint=_hf_endpoint(), token=_hf_token(uri))
    info = with_retries(f"list {uri.raw}", lambda: api.model_info(uri.repo, revision=uri.revision))
    for sibling in info.siblings or []:
        inside(dest, sibling.rfilename, f"{uri.raw}: file {sibling.rfilename!r}")


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
            _check_hf_names(uri, dest)
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
