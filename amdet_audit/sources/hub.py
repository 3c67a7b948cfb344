"""Hub targets: ``org/name[@rev]`` or ``hf://org/name[@rev]``, pinned to a commit sha and fetched selectively.

The revision is resolved to a commit sha first and only the sha is used afterwards, so every file comes from the
same commit. Only the text-encoder files are downloaded (configs, safetensors, tokenizer files); code files and
pickle weights are listed from the repo's file listing, never downloaded (pickle only with ``allow_pickle``).
``trust_remote_code`` is never used. A token comes from the ``HF_TOKEN`` environment variable only (a token saved
on disk by ``hf auth login`` is not sent) and is never printed.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from amdet_audit.errors import (
    AmdetError,
    HubError,
    NotATextEncoderError,
    SourceNotFoundError,
    UsageError,
)
from amdet_audit.sources import safe_files
from amdet_audit.sources.local import SAFETENSORS_INDEX, select_weights
from amdet_audit.sources.model import PICKLE_SUFFIXES, SAFETENSORS_SUFFIX, ResolvedTarget

DEFAULT_REVISION = "main"
HF_PREFIX = "hf://"
COMMIT_SHA = re.compile(r"^[0-9a-f]{40}$")
# huggingface_hub's rule: word characters, '-' and '.', starting and ending with a word character, <= 96 long.
REPO_PART = re.compile(r"^\w(?:[\w.-]{0,94}\w)?$", re.ASCII)
BAD_REVISION = re.compile(r"[\s@~^:?*\[\\]|\.\.|^/|/$|^-")
NON_MODEL_PREFIXES = ("datasets/", "spaces/", "buckets/", "kernels/")
MODEL_INDEX = "model_index.json"
OFFLINE_VALUES = {"1", "ON", "YES", "TRUE"}


# -- parsing --------------------------------------------------------------------------------------------------------


def check_repo_id(repo_id: str) -> str:
    """Return ``repo_id`` if it is a valid ``org/name``; raise UsageError saying what is wrong otherwise."""
    parts = repo_id.split("/")
    if len(parts) != 2 or not all(REPO_PART.match(p) for p in parts):
        raise UsageError(
            f"{repo_id!r} is not a Hugging Face repo id: expected 'org/name' (letters, digits, '-', '_', '.'; "
            "at most 96 characters each), optionally with '@revision'"
        )
    if "--" in repo_id or ".." in repo_id or repo_id.endswith(".git"):
        raise UsageError(f"{repo_id!r} is not a Hugging Face repo id: '--', '..' and a '.git' ending are not allowed")
    return repo_id


def parse_repo_ref(text: str) -> tuple[str, str | None]:
    """Split ``org/name``, ``org/name@rev``, ``hf://org/name`` or ``hf://org/name@rev`` into (repo_id, revision).

    Raises:
        UsageError: not a model repo id, or an empty or malformed revision.
    """
    body = text.strip()
    body = body[len(HF_PREFIX) :] if body.startswith(HF_PREFIX) else body
    if body.startswith(NON_MODEL_PREFIXES) and body.count("/") >= 2:
        raise UsageError(f"{text!r}: only model repos are supported, not {body.split('/')[0]}")
    repo_id, at, revision = body.partition("@")
    check_repo_id(repo_id)
    if at and not revision:
        raise UsageError(f"{text!r}: empty revision after '@'")
    return repo_id, check_revision(revision) if revision else None


def check_revision(revision: str) -> str:
    """Return ``revision`` if it can name a branch, tag or commit (it also names a file under the cache's refs/)."""
    if not revision or BAD_REVISION.search(revision):
        raise UsageError(f"{revision!r} is not a valid branch, tag or commit name")
    return revision


# -- resolving ------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Request:
    """What was asked, for messages: the repo, the revision name, the endpoint, offline or not."""

    repo_id: str
    revision: str
    endpoint: str
    offline: bool

    @property
    def label(self) -> str:
        return f"{self.repo_id}@{self.revision}"


def resolve_hub(
    repo_id: str,
    *,
    revision: str | None = None,
    component: str | None = None,
    offline: bool | None = None,
    allow_pickle: bool = False,
    cache_dir: Path | None = None,
    input: str | None = None,
) -> ResolvedTarget:
    """Fetch the text-encoder files of a hub model repo at one commit and describe them.

    The revision is resolved to a commit sha first (``HfApi.model_info``; offline: the local cache's refs), then
    only the files the audit uses are downloaded at that sha: for a diffusers pipeline (``model_index.json``) the
    text-encoder components and their tokenizer folders, for a plain model repo its config, weights and tokenizer.

    Args:
        repo_id (`str`):
            ``org/name`` of a model repo.
        revision (`str`, *optional*):
            Branch, tag or full commit sha. Defaults to ``"main"``. Recorded as requested; the sha it resolved to
            is recorded in ``commit_sha``.
        component (`str`, *optional*):
            One pipeline component (``"text_encoder_2"``...); only it and its tokenizer are fetched.
        offline (`bool`, *optional*):
            ``True``: use the local cache only. Otherwise the ``HF_HUB_OFFLINE`` environment variable decides
            (read at call time).
        allow_pickle (`bool`, *optional*, defaults to `False`):
            Accept pickle weights (.bin/.pt/.pth/.ckpt) when a component has no safetensors. Pickle can run code
            when loaded.
        cache_dir (`Path`, *optional*):
            The hub cache folder. Defaults to huggingface_hub's (``HF_HUB_CACHE`` / ``HF_HOME``).
        input (`str`, *optional*):
            The TARGET as the user typed it, recorded in the result. Defaults to ``repo_id[@revision]``.

    Returns:
        [`ResolvedTarget`]: ``kind="hub"``, ``root`` the snapshot folder of the commit, ``repo_id``, ``revision``
        (as requested), ``commit_sha``, the sha256 of every used file, ``custom_code`` (``.py`` files in the repo
        and ``auto_map`` keys, never downloaded or run) and ``other_files`` (weight files not used).

    Raises:
        [`UsageError`]: malformed repo id or revision, or a component the pipeline does not have.
        [`SourceNotFoundError`]: unknown repo, revision or file; offline and not in the local cache.
        [`PickleRefusedError`]: a component has only pickle weights and ``allow_pickle`` is false (nothing is
            downloaded).
        [`NotATextEncoderError`], [`WeightsError`]: the repo holds no usable text encoder.
        [`HubError`]: the hub cannot be reached, fails (HTTP 5xx), or refuses access (gated/private: a token may
            be needed).
    """
    from huggingface_hub import constants

    check_repo_id(repo_id)
    request = _Request(repo_id, check_revision(revision or DEFAULT_REVISION), constants.ENDPOINT, is_offline(offline))
    storage = _storage_folder(repo_id, cache_dir)
    with hub_errors(request):
        if request.offline:
            sha, listing = cached_commit(request, storage, cache_dir)
        else:
            sha, listing = remote_commit(request)
        plan = plan_download(
            listing,
            lambda path: _fetch_json(request, sha, path, cache_dir),
            label=request.label,
            component=component,
            allow_pickle=allow_pickle,
        )
        snapshot = _download(request, sha, plan, cache_dir)
    if not request.offline:
        remember_ref(storage, request.revision, sha)

    from amdet_audit.sources.local import inspect_folder

    asked = repo_id if revision is None else f"{repo_id}@{revision}"
    target = inspect_folder(snapshot, input=input or asked, kind="hub", component=component, allow_pickle=allow_pickle,
                            link_roots=(storage / "blobs",))
    target.repo_id, target.revision, target.commit_sha = repo_id, request.revision, sha
    py_files = [p for p in listing if p.endswith(".py")]
    target.custom_code = sorted(set(target.custom_code) | set(py_files))
    unused = [p for p in listing if _is_weight_file(p) and p not in plan]
    target.other_files = sorted(set(target.other_files) | set(unused))
    return target


def pinned_target(target: str, *, offline: bool | None = None, cache_dir: Path | None = None) -> str:
    """``org/name@<sha>``: a hub TARGET with its revision resolved once to a commit sha (one API call, or the
    local cache's refs offline; nothing is downloaded), so that every later resolve fetches that commit."""
    from huggingface_hub import constants

    repo_id, revision = parse_repo_ref(target)
    check_repo_id(repo_id)
    request = _Request(repo_id, check_revision(revision or DEFAULT_REVISION), constants.ENDPOINT, is_offline(offline))
    with hub_errors(request):
        if request.offline:
            sha = cached_commit(request, _storage_folder(repo_id, cache_dir), cache_dir)[0]
        else:
            sha = remote_commit(request)[0]
    return f"{repo_id}@{sha}"


def is_offline(offline: bool | None) -> bool:
    """Offline when asked, or when HF_HUB_OFFLINE (or TRANSFORMERS_OFFLINE) says so now or said so at import."""
    from huggingface_hub import constants

    env = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or ""
    return bool(offline) or env.strip().upper() in OFFLINE_VALUES or bool(constants.HF_HUB_OFFLINE)


def remote_commit(request: _Request) -> tuple[str, list[str]]:
    """Resolve the revision to a commit sha with ``model_info``; return it and the repo's file list at that sha."""
    from huggingface_hub import HfApi

    info = HfApi(token=_token()).model_info(request.repo_id, revision=request.revision)
    if not info.sha:
        raise HubError(f"{request.endpoint} gave no commit sha for '{request.label}'")
    return info.sha, sorted(s.rfilename for s in info.siblings or [])


def cached_commit(request: _Request, storage: Path, cache_dir: Path | None) -> tuple[str, list[str]]:
    """Resolve the revision from the local cache (a full sha as is, else ``refs/<rev>``) and list its files."""
    not_cached = SourceNotFoundError(f"'{request.label}' is not in the local cache (offline)")
    if COMMIT_SHA.match(request.revision):
        sha = request.revision
    else:
        ref = storage / "refs" / request.revision
        if not ref.is_file():
            raise not_cached
        sha = ref.read_text(encoding="utf-8").strip()
    snapshot = storage / "snapshots" / sha
    if not snapshot.is_dir():
        raise not_cached
    try:  # the full listing, cached by snapshot_download (huggingface_hub >= 2) for this commit
        from huggingface_hub import get_cached_repo_tree
        from huggingface_hub.errors import CachedRepoTreeNotFoundError

        return sha, sorted(f.path for f in get_cached_repo_tree(request.repo_id, revision=sha, cache_dir=cache_dir))
    except ImportError:
        pass
    except CachedRepoTreeNotFoundError:
        pass
    # no cached listing (an older cache or client): plan from what is on disk
    return sha, sorted(p.relative_to(snapshot).as_posix() for p in snapshot.rglob("*") if p.is_file())


def remember_ref(storage: Path, revision: str, sha: str) -> None:
    """Record ``refs/<revision> -> sha`` in the cache (atomically) so an offline run can find the branch or tag."""
    if revision == sha:
        return
    ref = storage / "refs" / revision
    with contextlib.suppress(OSError):  # a read-only cache only costs offline look-ups by name
        if ref.is_file() and ref.read_text(encoding="utf-8") == sha:
            return
        ref.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{ref.name}.", dir=ref.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                handle.write(sha)
            os.replace(tmp, ref)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)


# -- what to download -----------------------------------------------------------------------------------------------


def plan_download(
    listing: list[str],
    fetch_json: Callable[[str], dict[str, Any]],
    *,
    label: str,
    component: str | None = None,
    allow_pickle: bool = False,
) -> list[str]:
    """The repo paths the audit needs, chosen from the repo's file list before anything large is downloaded.

    ``fetch_json`` reads a small JSON file of the repo (model_index.json, a safetensors index).
    Raises UsageError, NotATextEncoderError, SourceNotFoundError, PickleRefusedError or WeightsError as
    :func:`amdet_audit.sources.local.inspect_folder` would on the downloaded folder.
    """
    from amdet_audit.sources.local import text_encoder_components, tokenizer_for

    files = set(listing)
    if MODEL_INDEX not in files:
        if component not in (None, "model"):
            raise UsageError(f"component {component!r} given, but {label} is a single model, not a pipeline")
        return sorted({*model_files(files, "", fetch_json, allow_pickle, label), *tokenizer_names(files, "")})
    names = [name for name, _ in text_encoder_components(fetch_json(MODEL_INDEX))]
    if not names:
        raise NotATextEncoderError(f"{label}: the pipeline's model_index.json lists no text encoder")
    if component is not None and component not in names:
        raise UsageError(f"component {component!r} not in {label}; it has: {', '.join(names)}")
    wanted = {MODEL_INDEX}
    for name in [component] if component else names:
        wanted |= set(model_files(files, f"{name}/", fetch_json, allow_pickle, f"{label}: {name}"))
        wanted |= set(tokenizer_names(files, f"{tokenizer_for(name)}/"))
    return sorted(wanted)


def model_files(
    files: set[str], prefix: str, fetch_json: Callable[[str], dict[str, Any]], allow_pickle: bool, label: str
) -> list[str]:
    """config.json and the weight files of the model folder ``prefix``, picked as local.weight_files picks them."""
    here = {p[len(prefix) :] for p in files if p.startswith(prefix) and "/" not in p[len(prefix) :]}
    if not here:
        raise SourceNotFoundError(f"{label}: component folder {prefix} is missing")
    if "config.json" not in here:
        raise NotATextEncoderError(f"{label}: no config.json, not a transformers model folder")
    return [prefix + name for name in ["config.json", *weight_names(here, prefix, fetch_json, allow_pickle, label)]]


def weight_names(
    here: set[str], prefix: str, fetch_json: Callable[[str], dict[str, Any]], allow_pickle: bool, label: str
) -> list[str]:
    """The weight files to fetch (with the safetensors index when there is one), by local.py's rules."""
    chosen, _ = select_weights(here, lambda: fetch_json(prefix + SAFETENSORS_INDEX), allow_pickle=allow_pickle,
                               label=f"{label} (nothing was downloaded)")
    return [SAFETENSORS_INDEX, *chosen] if SAFETENSORS_INDEX in here else chosen


def tokenizer_names(files: set[str], prefix: str) -> list[str]:
    """The tokenizer files (the names local.py reads) directly under ``prefix``."""
    from amdet_audit.sources.model import TOKENIZER_EXTRAS, TOKENIZER_FILE_SETS

    names = {f for group in TOKENIZER_FILE_SETS for f in group} | set(TOKENIZER_EXTRAS)
    return sorted(prefix + n for n in names if prefix + n in files)


def _is_weight_file(path: str) -> bool:
    suffix = PurePosixPath(path).suffix
    return suffix in PICKLE_SUFFIXES or suffix == SAFETENSORS_SUFFIX


# -- huggingface_hub calls ------------------------------------------------------------------------------------------


def _storage_folder(repo_id: str, cache_dir: Path | None) -> Path:
    """``<cache>/models--org--name``, the folder huggingface_hub keeps this repo in."""
    from huggingface_hub import constants
    from huggingface_hub.file_download import repo_folder_name

    root = Path(cache_dir if cache_dir is not None else constants.HF_HUB_CACHE).expanduser().resolve()
    return root / repo_folder_name(repo_id=repo_id, repo_type="model")


def _fetch_json(request: _Request, sha: str, path: str, cache_dir: Path | None) -> dict[str, Any]:
    """Download (or read from the cache) one small JSON file of the repo at ``sha``."""
    from huggingface_hub import hf_hub_download

    local = hf_hub_download(
        request.repo_id,
        path,
        revision=sha,
        cache_dir=cache_dir,
        local_files_only=request.offline,
        token=_token(),
        tqdm_class=_progress_class(),
    )
    storage = _storage_folder(request.repo_id, cache_dir)
    return safe_files.read_json(Path(local), root=storage, link_roots=(storage / "blobs",))


def _download(request: _Request, sha: str, paths: list[str], cache_dir: Path | None) -> Path:
    """``snapshot_download`` of exactly ``paths`` at ``sha``; returns the snapshot folder."""
    from huggingface_hub import snapshot_download

    folder = snapshot_download(
        request.repo_id,
        revision=sha,
        allow_patterns=[_literal(p) for p in paths],
        cache_dir=cache_dir,
        local_files_only=request.offline,
        token=_token(),
        tqdm_class=_progress_class(),
    )
    return Path(folder)


def _literal(path: str) -> str:
    """An fnmatch pattern matching exactly ``path`` (``*``, ``?`` and ``[`` escaped)."""
    return re.sub(r"([*?\[])", r"[\1]", path)


def _progress_class() -> type | None:
    """huggingface_hub's own bars on a terminal; silent ones otherwise or under NO_COLOR."""
    if sys.stderr.isatty() and not os.environ.get("NO_COLOR"):
        return None
    from huggingface_hub.utils import tqdm

    class Quiet(tqdm):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            kwargs["disable"] = True
            super().__init__(*args, **kwargs)

    return Quiet


def _transport_errors() -> tuple[type[BaseException], ...]:
    """Connection and timeout errors of the HTTP client huggingface_hub uses (httpx2, httpx or requests)."""
    found: list[type[BaseException]] = []
    for module, name in (("httpx2", "TransportError"), ("httpx", "TransportError"), ("requests", "ConnectionError")):
        with contextlib.suppress(ImportError, AttributeError):
            found.append(getattr(__import__(module), name))
    return tuple(found)


@contextlib.contextmanager
def hub_errors(request: _Request) -> Iterator[None]:
    """Turn huggingface_hub's errors into amdet-audit's, with one-line messages that say what was asked."""
    from huggingface_hub.errors import (
        EntryNotFoundError,
        FileMetadataError,
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        OfflineModeIsEnabled,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    where = request.endpoint
    try:
        yield
    except AmdetError:
        raise
    except RevisionNotFoundError as err:
        raise SourceNotFoundError(f"revision '{request.revision}' not found in '{request.repo_id}'") from err
    except GatedRepoError as err:
        raise HubError(_refused(request, _status(err))) from err
    except RepositoryNotFoundError as err:
        hint = "" if _has_token() else " (a private repo needs HF_TOKEN)"
        raise SourceNotFoundError(f"repo '{request.repo_id}' not found on {where}{hint}") from err
    except (LocalEntryNotFoundError, OfflineModeIsEnabled) as err:
        if request.offline or isinstance(err, OfflineModeIsEnabled):
            raise SourceNotFoundError(f"'{request.label}' is not in the local cache (offline)") from err
        cause = err.__cause__ or err
        raise HubError(f"cannot download '{request.label}' from {where}: {type(cause).__name__}") from err
    except EntryNotFoundError as err:  # remote: a listed file vanished between listing and download
        raise SourceNotFoundError(f"a file of '{request.label}' was not found on {where}") from err
    except HfHubHTTPError as err:
        status = _status(err)
        if status in (401, 403):
            raise HubError(_refused(request, status)) from err
        raise HubError(f"{where} answered HTTP {status} for '{request.label}'; try again later") from err
    except FileMetadataError as err:
        raise HubError(f"{where} does not answer like a Hugging Face hub (check HF_ENDPOINT)") from err
    except _transport_errors() as err:
        raise HubError(f"cannot reach {where} for '{request.label}': {type(err).__name__}") from err


def _status(err: Exception) -> int | None:
    response = getattr(err, "response", None)
    return getattr(response, "status_code", None)


def _refused(request: _Request, status: int | None) -> str:
    who = "the token in HF_TOKEN may lack access" if _has_token() else "a token may be needed (set HF_TOKEN)"
    return f"access to '{request.repo_id}' refused by {request.endpoint} (HTTP {status}, gated or private): {who}"


def _token() -> str | bool:
    """The token from ``HF_TOKEN`` (environment only), or False: a token stored on disk is never sent."""
    return os.environ.get("HF_TOKEN") or os.environ.get("HUGGING_FACE_HUB_TOKEN") or False


def _has_token() -> bool:
    """Whether a token is configured (its value never goes into a message)."""
    return _token() is not False
