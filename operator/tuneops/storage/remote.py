"""Transfers to and from S3 (boto3) and the Hugging Face Hub (huggingface_hub), with retries and backoff.

Integrity. Nothing already there is kept or reused on its size: a file or object stands in for a new one only
when a SHA-256 digest says it holds the same bytes.

- A download into a folder that already holds a file of the object's name keeps that file only when its
  sha256 is the one the prefix's manifest lists for it, or the full-object SHA-256 checksum S3 reports;
  otherwise (no digest to compare with, or another one) the object is downloaded again. Files the prefix no
  longer holds are removed, so the folder is exactly the download.
- An S3 artifact is reused (Output.reusable / existing) only when every file of its manifest is there with its
  size and its sha256, and no other object is in its folder (hidden names included). The sha256 comes from
  what S3 reports only when that is a real digest of the whole object: the ChecksumSHA256 of an object
  uploaded in one part (tuneops uploads with ChecksumAlgorithm SHA256; S3 computes and checks it on the bytes
  it receives, and an object written over without it has none). A multipart object's checksum is a checksum
  of its parts' checksums, not its sha256, and an ETag is an MD5 (or not a digest at all): such objects are
  re-verified by content, read once and hashed (a download without a copy on disk), which costs a transfer of
  the artifact but less than making it again. Publishing into a content folder that already exists skips
  only files whose S3 checksum proves them; the others are uploaded again.
- A Hub artifact is reused only when every file of its manifest is in the repository with its size and
  sha256: the Git LFS object id (the content's SHA-256) for LFS files, the content itself for small git files
  (downloaded and hashed). A Hub download drops huggingface_hub's `.cache/huggingface` bookkeeping (so it
  never decides what is kept: files are re-checked against the LFS sha256 or downloaded again) and the
  `.gitattributes` the Hub adds to every repository, unless the artifact's manifest lists it.

Credentials (storage.credentials). A source with its own Secret is read with that Secret's keys. A source
without keys is read with the Pod's or node's ambient AWS identity (the default chain: environment, shared
files, web identity, container and instance metadata) only when $TUNEOPS_AMBIENT_CREDENTIALS says the operator
config allows it; otherwise its requests are unsigned (anonymous: a public bucket still works, nothing of the
node's identity is looked up or lent), and an access denied says why.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path, PurePosixPath
from typing import Any, ParamSpec, TypeVar

from tuneops import backoff
from tuneops.storage import credentials
from tuneops.storage.manifest import MANIFEST_NAME, Manifest, ManifestError, read_manifest, sha256_file
from tuneops.storage.safety import inside, safe_relative, walk_files
from tuneops.storage.uri import ArtifactURI, InputError, parse_uri

log = logging.getLogger("tuneops.storage")
T = TypeVar("T")
P = ParamSpec("P")

RETRIES = int(os.environ.get("TUNEOPS_RETRIES", "5"))
BACKOFF_S = float(os.environ.get("TUNEOPS_BACKOFF_S", "1.0"))
# An S3 output prefix names its current artifact folder in this object (see s3_upload).
POINTER_NAME = "tuneops-current.json"
POINTER_KIND = "TuneopsArtifactPointer"
_CONTENT_DIR = re.compile(r"[0-9a-f]{16}")
# Every upload asks S3 for a SHA-256 checksum of what it received (see the module docstring).
UPLOAD_ARGS = {"ChecksumAlgorithm": "SHA256"}
# The file the Hub adds to every repository (huggingface_hub's uploads never delete it).
HUB_GITATTRIBUTES = ".gitattributes"
_CHUNK = 4 << 20


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
            delay = backoff.delay(i, BACKOFF_S, BACKOFF_S * 2**attempts, spread=0.25)
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


def _sealed_session() -> Any:
    """A boto3 session whose credential chain is empty: it never looks up the environment's keys, shared
    credential files, web identity, container or instance metadata."""
    import boto3
    import botocore.credentials
    import botocore.session

    core = botocore.session.get_session()
    core.register_component("credential_provider", botocore.credentials.CredentialResolver([]))
    return boto3.session.Session(botocore_session=core)


def _s3(uri: ArtifactURI) -> Any:
    """A client with the credentials of the source `uri` belongs to (see storage.credentials): its Secret's
    keys; else the ambient identity when allowed; else unsigned requests."""
    import boto3
    from botocore import UNSIGNED
    from botocore.config import Config

    args = credentials.s3_client_args(uri.raw)
    config = Config(retries={"max_attempts": 5, "mode": "standard"})
    signing = credentials.s3_signing(args)
    # Without a source's own endpoint, AWS_ENDPOINT_URL / AWS_ENDPOINT_URL_S3 select a non-AWS server (MinIO,
    # a local test server); boto3 reads them (configuration, not credentials).
    if signing == credentials.AMBIENT:
        return boto3.client("s3", config=config, **args)
    if signing == credentials.UNSIGNED:
        config = config.merge(Config(signature_version=UNSIGNED))
    return _sealed_session().client("s3", config=config, **args)


def _explain_denied(fn: Callable[P, T]) -> Callable[P, T]:
    """An access denied to an unsigned request names its cause: the source has no credentials of its own."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
        try:
            return fn(*args, **kwargs)
        except InputError:
            raise
        except Exception as exc:
            uri = next((a for a in args if isinstance(a, ArtifactURI)), None)
            if uri is None or _status(exc) not in (401, 403):
                raise
            if credentials.s3_signing(credentials.s3_client_args(uri.raw)) != credentials.UNSIGNED:
                raise
            raise InputError(
                f"{uri.raw}: access denied to an unsigned (anonymous) request. This source has no credentials of"
                " its own and the operator config does not allow ambient credentials (the Pod's or node's AWS"
                " identity): name a Secret with the bucket's AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY in"
                " the source's tokenSecretRef, or have the administrator set allowAmbientCredentials (chart"
                " value config.allowAmbientCredentials)"
            ) from None

    return wrapper


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


@_explain_denied
def s3_current(uri: ArtifactURI) -> ArtifactURI | None:
    """Where the output prefix's current artifact lives (its pointer, written after the artifact), if any."""
    data = _get_json(_s3(uri), uri.bucket, _key(uri, POINTER_NAME))
    if not isinstance(data, dict) or data.get("kind") != POINTER_KIND:
        return None
    where = str(data.get("path", ""))
    safe_relative(where, f"{uri.raw}: {POINTER_NAME}")
    return uri.child(where)


@_explain_denied
def s3_download(uri: ArtifactURI, dest: Path) -> Path:
    """Downloads every object under s3://bucket/prefix/ (or the single object) into dest.

    An output prefix tuneops publishes to holds one folder per artifact and a pointer to the current one: the
    pointed folder is what is downloaded. Keys that would land outside dest (`prefix//etc/x`, `..`) are refused.
    A file already in dest is kept only when a digest proves it is the object (see the module docstring); files
    dest holds that the prefix does not are removed.
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
    wanted: list[tuple[str, str, Path, int]] = []
    for key, size in keys:
        rel = key[len(list_prefix) :]
        if (not rel or rel.endswith("/")) and size == 0:
            continue  # a console's "folder" marker
        # Checked for every key before anything is written: one hostile key refuses the whole input.
        wanted.append((key, rel, inside(dest, rel, f"{uri.raw}: object key {key!r}"), size))
    names = {rel for _, rel, _, _ in wanted}
    for have in walk_files(dest):
        if have.as_posix() not in names:
            log.info("%s: removing %s, which the prefix does not hold", dest, have)
            (dest / have).unlink()
    listed: dict[str, str] | None = None
    for key, rel, target, size in wanted:
        if target.is_file() and not target.is_symlink() and target.stat().st_size == size:
            if listed is None:
                listed = _listed_sha256(client, uri)
            if _holds(client, uri.bucket, key, target, listed.get(rel)):
                continue
            log.info(
                "%s: %s differs from (or cannot be proven to be) %s: downloading it again", dest, rel, key
            )
        target.parent.mkdir(parents=True, exist_ok=True)
        part = target.with_name(target.name + ".part")
        with_retries(
            f"download s3://{uri.bucket}/{key}",
            functools.partial(client.download_file, uri.bucket, key, str(part)),
        )
        part.replace(target)
    log.info("downloaded %d objects from %s", len(wanted), uri.raw)
    return dest


def _listed_sha256(client: Any, uri: ArtifactURI) -> dict[str, str]:
    """path -> sha256 of the files the prefix's manifest lists (empty without a usable manifest)."""
    data = _get_json(client, uri.bucket, _key(uri, MANIFEST_NAME))
    try:
        m = Manifest.from_json(data) if isinstance(data, dict) else None
    except (ManifestError, AttributeError, TypeError, ValueError):
        m = None
    return {str(f["path"]): str(f["sha256"]) for f in m.files} if m is not None else {}


def _holds(client: Any, bucket: str, key: str, local: Path, listed: str | None) -> bool:
    """Whether the local file is the object, by sha256: the manifest's, else S3's full-object checksum."""
    expected = listed or _s3_sha256(client, bucket, key)
    return expected is not None and sha256_file(local) == expected


def _s3_sha256(client: Any, bucket: str, key: str) -> str | None:
    """The object's sha256 (hex) when S3 reports a real one: the ChecksumSHA256 of a single-part object.

    A multipart object's checksum is a checksum of its parts' (S3 marks it COMPOSITE, or `-N`; its ETag ends in
    `-N` too): not the content's sha256, so None, as for an object stored without a SHA-256 checksum."""
    head = with_retries(
        f"head s3://{bucket}/{key}",
        lambda: client.head_object(Bucket=bucket, Key=key, ChecksumMode="ENABLED"),
    )
    value = head.get("ChecksumSHA256")
    kind = head.get("ChecksumType")
    etag = str(head.get("ETag", "")).strip('"')
    if not isinstance(value, str) or "-" in value or "-" in etag or kind not in (None, "FULL_OBJECT"):
        return None
    try:
        raw = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        return None
    return raw.hex() if len(raw) == 32 else None


def _streamed_sha256(client: Any, bucket: str, key: str) -> str:
    """The object's sha256, read once and hashed (nothing written to disk)."""

    def read() -> str:
        body = client.get_object(Bucket=bucket, Key=key)["Body"]
        h = hashlib.sha256()
        try:
            while chunk := body.read(_CHUNK):
                h.update(chunk)
        finally:
            body.close()
        return h.hexdigest()

    return with_retries(f"read s3://{bucket}/{key}", read)


@_explain_denied
def s3_read_manifest(uri: ArtifactURI) -> Manifest | None:
    data = _get_json(_s3(uri), uri.bucket, _key(uri, MANIFEST_NAME))
    if data is None:
        return None
    try:
        return Manifest.from_json(data)
    except (ManifestError, AttributeError, TypeError, ValueError):
        return None


def _objects(client: Any, uri: ArtifactURI) -> dict[str, int]:
    """Relative name -> size of the objects under the folder (console folder markers left out)."""
    prefix = uri.key + "/" if uri.key else ""
    return {
        key[len(prefix) :]: size
        for key, size in _list(client, uri, prefix)
        if not ((not key[len(prefix) :] or key.endswith("/")) and size == 0)
    }


def _s3_problems(
    client: Any, uri: ArtifactURI, manifest: Manifest, *, by_content: bool
) -> tuple[dict[str, str], list[str]]:
    """Files of the manifest that the folder does not prove to hold (path -> why), and unlisted objects.

    A file is proven by S3's full-object SHA-256 checksum; without one it is read and hashed when `by_content`,
    else reported as unproven."""
    objects = _objects(client, uri)
    bad: dict[str, str] = {}
    for f in manifest.files:
        rel, size = str(f["path"]), int(f["size"])
        key = _key(uri, rel)
        if rel not in objects:
            bad[rel] = f"missing {rel}"
            continue
        if objects[rel] != size:
            bad[rel] = f"size of {rel} differs"
            continue
        actual = _s3_sha256(client, uri.bucket, key)
        if actual is None and by_content:
            actual = _streamed_sha256(client, uri.bucket, key)
        if actual is None:
            bad[rel] = f"{rel} has no SHA-256 checksum in S3"
        elif actual != f["sha256"]:
            bad[rel] = f"sha256 of {rel} differs"
    listed = {str(f["path"]) for f in manifest.files} | {MANIFEST_NAME}
    unlisted = sorted(rel for rel in objects if rel not in listed)
    return bad, unlisted


@_explain_denied
def s3_verify(uri: ArtifactURI, manifest: Manifest) -> list[str]:
    """Differences between the manifest and the artifact folder at `uri`, by sha256 (S3's full-object checksum,
    else the content); empty when the folder holds exactly the manifest's files."""
    bad, unlisted = _s3_problems(_s3(uri), uri, manifest, by_content=True)
    return [*bad.values(), *(f"unlisted {rel}" for rel in unlisted)]


@_explain_denied
def s3_candidate(uri: ArtifactURI) -> tuple[ArtifactURI, Manifest] | None:
    """The output prefix's current artifact folder and its manifest, not yet checked against its files."""
    current = s3_current(uri)
    if current is None:
        return None
    m = s3_read_manifest(current)
    if m is None or content_dir(m.digest) != current.name:
        return None
    return current, m


def s3_published(uri: ArtifactURI) -> Manifest | None:
    """The output's current artifact: the pointed folder's manifest, when the folder holds exactly its files
    (by sha256, see s3_verify)."""
    found = s3_candidate(uri)
    if found is None:
        return None
    current, m = found
    problems = s3_verify(current, m)
    if problems:
        log.warning("%s does not match its manifest (%s)", current.raw, "; ".join(problems[:5]))
        return None
    return m


@_explain_denied
def s3_upload(local: Path, uri: ArtifactURI, manifest: Manifest) -> ArtifactURI:
    """Publishes under `<prefix>/<digest16>/`: the files, then that folder's manifest, then the prefix's pointer.

    Nothing is overwritten in place: a run killed mid-upload leaves a folder without a manifest, which no
    reader trusts, and the previous artifact (its folder, and the pointer to it) stays as it was. Folders of
    earlier artifacts are kept: a service may still serve one (remove them with a bucket lifecycle rule).
    When the folder already exists (the same content published before), only files S3's checksum proves are
    skipped, and objects its manifest does not list are removed.
    """
    client = _s3(uri)
    target = uri.child(content_dir(manifest.digest))
    prefix = target.key + "/"
    todo = [str(f["path"]) for f in manifest.files]
    found = s3_read_manifest(target)
    if found is not None and found.digest == manifest.digest:
        bad, unlisted = _s3_problems(client, target, manifest, by_content=False)
        todo = [rel for rel in todo if rel in bad]
        for rel in unlisted:
            log.warning("%s: removing %s, which its manifest does not list", target.raw, rel)
            with_retries(
                f"delete {rel}", functools.partial(client.delete_object, Bucket=uri.bucket, Key=prefix + rel)
            )
    for rel in todo:
        with_retries(
            f"upload {rel}",
            functools.partial(
                client.upload_file, str(local / rel), uri.bucket, prefix + rel, ExtraArgs=UPLOAD_ARGS
            ),
        )
    if todo or found is None or found.digest != manifest.digest:
        with_retries(
            "upload manifest",
            lambda: client.upload_file(
                str(local / MANIFEST_NAME), uri.bucket, prefix + MANIFEST_NAME, ExtraArgs=UPLOAD_ARGS
            ),
        )
    pointer = json.dumps({"kind": POINTER_KIND, "digest": manifest.digest, "path": target.name}).encode()
    with_retries(
        "upload pointer",
        lambda: client.put_object(Bucket=uri.bucket, Key=_key(uri, POINTER_NAME), Body=pointer),
    )
    log.info("uploaded %d of %d files to %s", len(todo), len(manifest.files), target.raw)
    return target


# ---------------------------------------------------------------------------------------------------- Hub


def _hf_endpoint(uri: ArtifactURI) -> str | None:
    return credentials.hf_endpoint(uri.raw)


def _hf_token(uri: ArtifactURI) -> str | None:
    return credentials.hf_token(uri.raw)


def _check_hf_names(uri: ArtifactURI, dest: Path) -> None:
    """The repository's file list, checked before anything is written: a name that would land outside dest
    refuses the whole download."""
    from huggingface_hub import HfApi

    api = HfApi(endpoint=_hf_endpoint(uri), token=_hf_token(uri))
    info = with_retries(f"list {uri.raw}", lambda: api.model_info(uri.repo, revision=uri.revision))
    for sibling in info.siblings or []:
        inside(dest, sibling.rfilename, f"{uri.raw}: file {sibling.rfilename!r}")


def hf_download(uri: ArtifactURI, dest: Path) -> Path:
    """Downloads a Hub repo (or one file of it) at a revision into dest; HF_ENDPOINT and HF_TOKEN are honoured."""
    from huggingface_hub import hf_hub_download, snapshot_download
    from huggingface_hub.errors import EntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError

    dest.mkdir(parents=True, exist_ok=True)
    # huggingface_hub keeps a file whose recorded etag matches without reading it: without its records, a file
    # already there is kept only when its sha256 is the LFS one, and other files are downloaded again.
    _drop_hub_records(dest)
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
                    endpoint=_hf_endpoint(uri),
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
                    endpoint=_hf_endpoint(uri),
                    max_workers=4,
                ),
            )
    except RepositoryNotFoundError:
        raise InputError(f"{uri.raw}: repository {uri.repo} not found (or the token has no access)") from None
    except RevisionNotFoundError:
        raise InputError(f"{uri.raw}: revision {uri.revision} not found") from None
    except EntryNotFoundError:
        raise InputError(f"{uri.raw}: file {uri.subpath} not found") from None
    _drop_hub_records(dest)
    if not uri.subpath:
        _drop_hub_gitattributes(dest)
    log.info("downloaded %s", uri.raw)
    return Path(path)


def _drop_hub_records(dest: Path) -> None:
    """Removes huggingface_hub's download records (`.cache/huggingface` in a local_dir): bookkeeping of the
    download, not files of the repository."""
    records = dest / ".cache" / "huggingface"
    if records.is_symlink():
        records.unlink()
    elif records.exists():
        shutil.rmtree(records)
    cache = dest / ".cache"
    if cache.is_dir() and not cache.is_symlink() and not any(cache.iterdir()):
        cache.rmdir()


def _drop_hub_gitattributes(dest: Path) -> None:
    """The Hub adds `.gitattributes` to every repository and huggingface_hub's uploads never delete it: it is
    the repository's, not the artifact's, unless the artifact's manifest lists it."""
    attrs = dest / HUB_GITATTRIBUTES
    if not attrs.is_file() or attrs.is_symlink():
        return
    m = read_manifest(dest)
    if m is None or HUB_GITATTRIBUTES not in {str(f["path"]) for f in m.files}:
        attrs.unlink()


def hf_read_manifest(uri: ArtifactURI) -> Manifest | None:
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError

    try:
        path = hf_hub_download(
            repo_id=uri.repo,
            filename=MANIFEST_NAME,
            revision=uri.revision,
            token=_hf_token(uri),
            endpoint=_hf_endpoint(uri),
        )
        return Manifest.from_json(json.loads(Path(path).read_text()))
    except (EntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError, ValueError, ManifestError):
        return None


def hf_verify(uri: ArtifactURI, manifest: Manifest) -> list[str]:
    """Differences between the manifest and the repository at the URI's revision, by sha256: the LFS object id
    (the content's SHA-256) of LFS files, the downloaded content of small git files. The Hub's own
    `.gitattributes` is not an unlisted file (see _drop_hub_gitattributes)."""
    from huggingface_hub import HfApi, hf_hub_download
    from huggingface_hub.hf_api import RepoFile

    api = HfApi(endpoint=_hf_endpoint(uri), token=_hf_token(uri))
    entries = with_retries(
        f"list {uri.raw}",
        lambda: list(api.list_repo_tree(uri.repo, revision=uri.revision, recursive=True)),
    )
    files = {str(e.path): e for e in entries if isinstance(e, RepoFile)}
    problems: list[str] = []
    with tempfile.TemporaryDirectory(prefix="tuneops-hf-verify-") as tmp:
        for f in manifest.files:
            rel = str(f["path"])
            entry = files.get(rel)
            if entry is None:
                problems.append(f"missing {rel}")
                continue
            if int(entry.size) != int(f["size"]):
                problems.append(f"size of {rel} differs")
                continue
            if entry.lfs is not None:
                actual = str(entry.lfs.sha256)
            else:
                got = with_retries(
                    f"download {rel}",
                    functools.partial(
                        hf_hub_download,
                        repo_id=uri.repo,
                        filename=rel,
                        revision=uri.revision,
                        local_dir=tmp,
                        token=_hf_token(uri),
                        endpoint=_hf_endpoint(uri),
                    ),
                )
                actual = sha256_file(Path(got))
            if actual != f["sha256"]:
                problems.append(f"sha256 of {rel} differs")
    listed = {str(f["path"]) for f in manifest.files} | {MANIFEST_NAME, HUB_GITATTRIBUTES}
    problems += [f"unlisted {rel}" for rel in sorted(files) if rel not in listed]
    return problems


def hf_upload(local: Path, uri: ArtifactURI) -> None:
    """One commit with all files (a Hub commit is atomic: readers see the old or the new artifact)."""
    from huggingface_hub import HfApi

    api = HfApi(endpoint=_hf_endpoint(uri), token=_hf_token(uri))
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
