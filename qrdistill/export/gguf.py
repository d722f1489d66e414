"""GGUF export: each trained student merged into its base, then converted by llama.cpp's own converter.

`export_gguf(D, O, outtype="f16")` merges each student with `qrdistill.export.model` into a temporary folder
under O and runs llama.cpp's `convert_hf_to_gguf.py` on it (a subprocess of the current Python), writing

- O/<student>-<outtype>.gguf: the model, for llama.cpp's server, llama-cpp-python or Ollama (`FROM ./file`);
- O/<student>-<outtype>.json: what it was made from (base, adapter digest, converter source, git SHA, the
  file's sha256).

Output types: f32, f16 (default), bf16 and q8_0 are written by the converter itself. llama.cpp's
quantisation types (q4_k_m, q5_k_m, q6_k, q4_0, ...) are made from the f16 file by llama.cpp's quantiser
(`llama_model_quantize` of llama-cpp-python, in this process); those that need an importance matrix are
refused (QUANT_TYPES lists the others). Each file is written under a temporary name and renamed into place.

Where the converter comes from: llama-cpp-python's source distribution vendors the llama.cpp it builds,
converter included (vendor/llama.cpp/convert_hf_to_gguf.py with its `conversion` package and its own
`gguf-py`). The PyPI `gguf` package ships no converter, and the vendored `gguf-py` is newer than the
PyPI release of the same version number (the converter fails with PyPI's gguf 0.19.0: `AttributeError:
DFLASH`); the converter puts its own copy first on sys.path, so they always match. The sdist of the
installed llama-cpp-python (so converter and runtime are one llama.cpp commit) is fetched once with
`pip download` from the package index and its converter kept under the qrdistill cache
(`~/.cache/qrdistill/llama.cpp-<version>/`). Offline, set QRDISTILL_LLAMA_CPP to a llama.cpp checkout or to
a llama-cpp-python sdist (.tar.gz). Nothing from the run directory is executed.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from qrdistill.errors import ConfigError, QRDistillError
from qrdistill.export import export_lock

log = logging.getLogger(__name__)

#: Output types llama.cpp's converter writes itself (its ternary tq1_0/tq2_0 are for BitNet models only).
CONVERTER_TYPES = ("f32", "f16", "bf16", "q8_0")
#: llama.cpp's quantisation types for dense models that need no importance matrix. The others (iq1-iq3 and
#: q2_k_s need one; tq*, mxfp4_moe, q1_0/q2_0 are for ternary, MoE or 1-2 bit models) are left to
#: llama.cpp's own llama-quantize, run on the f16 file.
QUANT_TYPES = ("q4_0", "q4_1", "q5_0", "q5_1", "q2_k", "q3_k_s", "q3_k_m", "q3_k_l", "q4_k_s", "q4_k_m",
               "q5_k_s", "q5_k_m", "q6_k", "iq4_nl", "iq4_xs")
#: Used when llama-cpp-python is not installed: the converter of a known llama.cpp release.
DEFAULT_LLAMA_CPP_PYTHON = "0.3.36"
LLAMA_CPP_ENV = "QRDISTILL_LLAMA_CPP"
CONVERTER = "convert_hf_to_gguf.py"
#: What the converter needs from a llama.cpp tree (paths relative to it).
CONVERTER_PARTS = (CONVERTER, "conversion/", "gguf-py/", "LICENSE")
MANIFEST_FORMAT = 1


def quantize_types() -> dict[str, int]:
    """QUANT_TYPES that the installed llama-cpp-python offers (name -> llama_ftype); none without it."""
    try:
        import llama_cpp
    except ImportError:
        return {}
    ftypes = {name: getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{name.upper()}", None) for name in QUANT_TYPES}
    return {name: int(v) for name, v in ftypes.items() if v is not None}


def check_outtype(outtype: str) -> tuple[str, int | None]:
    """(type, llama_ftype to quantise to, or None when the converter writes it)."""
    want = str(outtype).strip().lower()
    if want in CONVERTER_TYPES:
        return want, None
    quant = quantize_types()
    if want in quant:
        return want, quant[want]
    if not quant:
        raise ConfigError(f"--quant {outtype!r}: expected one of {', '.join(CONVERTER_TYPES)}; llama.cpp's "
                          "quantisation types (q4_k_m, q5_k_m, q6_k, ...) need llama-cpp-python: "
                          "pip install 'qrdistill[server]'")
    other = ("; other llama.cpp types (importance-matrix, ternary, MoE) are made by llama.cpp's llama-quantize "
             "from the f16 file")
    raise ConfigError(f"--quant {outtype!r}: expected one of {', '.join(CONVERTER_TYPES)} (llama.cpp's converter) "
                      f"or {', '.join(quant)} (llama.cpp's quantiser){other}")


def export_gguf(run_dir: Path, out: Path, students: list[str] | None = None, outtype: str = "f16") -> dict[str, Any]:
    """Convert each trained student (all, or `students`) to out/<student>-<outtype>.gguf."""
    from qrdistill.export.model import merge_student, provenance, trained_students

    run_dir, out = Path(run_dir), Path(out)
    outtype, ftype = check_outtype(outtype)
    summary, todo = trained_students(run_dir, students)
    for st in todo:
        check_dest(out / f"{st.name}-{outtype}.gguf")
    tree, source = converter_tree()
    held = contextlib.ExitStack()
    try:
        out.mkdir(parents=True, exist_ok=True)
        held.enter_context(export_lock(out, "gguf-export", "GGUF files"))
        for stale in out.glob(".gguf-work-*"):  # left by a killed export (the lock says none is running)
            shutil.rmtree(stale, ignore_errors=True)
        work = Path(tempfile.mkdtemp(dir=out, prefix=".gguf-work-"))
    except OSError as e:
        held.close()
        raise QRDistillError(f"--out {out}: cannot write ({e.strerror or e})") from None
    except BaseException:
        held.close()
        raise
    results = {}
    try:
        for st in todo:
            dest = out / f"{st.name}-{outtype}.gguf"
            seconds: dict[str, float] = {}
            t0 = time.monotonic()
            merged = merge_student(st, summary, work / st.name)
            seconds["merge"] = round(time.monotonic() - t0, 2)
            tmp = work / f"{st.name}-{outtype}.gguf"
            t0 = time.monotonic()
            convert(tree, Path(merged["path"]), tmp, "f16" if ftype is not None else outtype, st.name)
            seconds["convert"] = round(time.monotonic() - t0, 2)
            if ftype is not None:
                t0 = time.monotonic()
                quantized = work / f"{st.name}-{outtype}.q.gguf"
                quantize(tmp, quantized, ftype, outtype)
                os.replace(quantized, tmp)
                seconds["quantize"] = round(time.monotonic() - t0, 2)
            shutil.rmtree(work / st.name, ignore_errors=True)  # the merged copy: disk, not needed any more
            info = {
                "format": MANIFEST_FORMAT,
                "what": "gguf",
                "student": st.name,
                "outtype": outtype,
                "file": dest.name,
                "bytes": tmp.stat().st_size,
                "sha256": _sha256(tmp),
                "base": st.model,
                "adapter_digest": st.digest,
                "method": summary.get("method"),
                "training_fingerprint": summary.get("fingerprint"),
                "training_git_sha": summary.get("git_sha"),
                "converter": source,
                "seconds": seconds,
            }
            info |= provenance()
            _publish(tmp, dest, info)
            log.info("export gguf: %s -> %s (%s, %.1f MB, %s)", st.name, dest, outtype, info["bytes"] / 1e6,
                     ", ".join(f"{k} {v:.1f}s" for k, v in seconds.items()))
            results[st.name] = {"gguf": str(dest), "manifest": str(_manifest(dest)), "bytes": info["bytes"],
                                "base": st.model, "seconds": seconds}
    except OSError as e:
        raise QRDistillError(f"--out {out}: cannot write the GGUF export ({e.strerror or e})") from None
    finally:
        shutil.rmtree(work, ignore_errors=True)
        held.close()
    return {"out": str(out), "outtype": outtype, "students": results}


def _manifest(gguf: Path) -> Path:
    return gguf.with_suffix(".json")


def _staged_manifests(dest: Path) -> list[Path]:
    manifest = _manifest(dest)
    return sorted(manifest.parent.glob(f".{manifest.name}.*.tmp"))


def _is_gguf_manifest(path: Path) -> bool:
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(manifest, dict) and manifest.get("what") == "gguf"


def check_dest(dest: Path) -> None:
    """A file of the export's name that no earlier export wrote (no manifest beside it) is not replaced.

    An export killed while publishing leaves its manifest staged beside the file (`_publish`); that
    counts as an earlier export too.
    """
    if dest.is_dir():
        raise QRDistillError(f"{dest}: is a directory; remove it or give another --out")
    if not dest.exists():
        return
    if not (_is_gguf_manifest(_manifest(dest)) or any(_is_gguf_manifest(p) for p in _staged_manifests(dest))):
        raise QRDistillError(f"{dest}: exists and is not a previous GGUF export (no {_manifest(dest).name} beside "
                             "it); remove it or give another --out")


def _publish(tmp: Path, dest: Path, info: dict[str, Any]) -> None:
    """The new manifest staged, the old one removed, the GGUF file renamed, then its manifest: a manifest
    never describes another file than the one beside it, and a kill at any point leaves either the old
    pair, or a file with its staged manifest (which `check_dest` accepts, so the next export replaces it)."""
    manifest = _manifest(dest)
    stale = _staged_manifests(dest)
    staged = manifest.with_name(f".{manifest.name}.{uuid.uuid4().hex[:8]}.tmp")
    staged.write_text(json.dumps(info, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    with contextlib.suppress(FileNotFoundError):
        manifest.unlink()
    os.replace(tmp, dest)
    os.replace(staged, manifest)
    for p in stale:
        p.unlink(missing_ok=True)


def convert(tree: Path, model_dir: Path, outfile: Path, outtype: str, name: str) -> None:
    """Run llama.cpp's converter on a transformers folder; one QRDistillError with its last words on failure."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONUTF8": "1"}
    env.pop("NO_LOCAL_GGUF", None)  # the converter must use the gguf-py it was written with
    cmd = [sys.executable, str(tree / CONVERTER), str(model_dir), "--outtype", outtype, "--outfile", str(outfile),
           "--model-name", name]
    log.debug("export gguf: %s", " ".join(cmd))
    proc = subprocess.run(cmd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, errors="replace")
    if proc.returncode == 0 and outfile.is_file():
        return
    lines = [ln for ln in proc.stdout.splitlines() if ln.strip()]
    last = next((ln for ln in reversed(lines) if not ln.startswith(" ")), lines[-1] if lines else "no output")
    hint = ""
    if "pre-tokenizer was not recognized" in proc.stdout:
        hint = ("; llama.cpp recognises a BPE tokenizer only by a hash of known models' tokenizers, and this "
                "one is not among them (SentencePiece tokenizers with a tokenizer.model convert directly)")
    elif "not supported" in last.lower() and "architecture" in last.lower():
        hint = "; llama.cpp has no support for this architecture"
    raise QRDistillError(f"student {name}: llama.cpp's converter failed (exit {proc.returncode}): "
                         f"{last.strip()[:300]}{hint}")


def quantize(src: Path, dest: Path, ftype: int, outtype: str) -> None:
    import ctypes

    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = ftype
    params.nthread = os.cpu_count() or 1
    # llama-cpp-python routes llama.cpp's log through this logger: a line per tensor is noise unless debugging,
    # its errors (why a quantisation fails) still show.
    lc_log = logging.getLogger("llama-cpp-python")
    before = lc_log.level
    lc_log.setLevel(logging.DEBUG if log.isEnabledFor(logging.DEBUG) else logging.ERROR)
    try:
        rc = llama_cpp.llama_model_quantize(str(src).encode(), str(dest).encode(), ctypes.byref(params))
    finally:
        lc_log.setLevel(before)
    if rc != 0 or not dest.is_file():
        raise QRDistillError(f"--quant {outtype}: llama.cpp's quantiser failed on {src.name} (code {rc})")


# -- where the converter comes from ---------------------------------------------------------------------------


def converter_tree() -> tuple[Path, str]:
    """A llama.cpp tree holding the converter, and a line saying where it came from."""
    env = os.environ.get(LLAMA_CPP_ENV, "").strip()
    if env:
        path = Path(env).expanduser()
        if path.is_dir():
            if not (path / CONVERTER).is_file():
                raise ConfigError(f"{LLAMA_CPP_ENV}={env}: no {CONVERTER} in that folder (give a llama.cpp "
                                  "checkout or a llama-cpp-python sdist .tar.gz)")
            return path, f"{LLAMA_CPP_ENV} {path}"
        if path.is_file():
            return _cached_tree(path.name.removesuffix(".tar.gz"), path), f"{LLAMA_CPP_ENV} {path}"
        raise ConfigError(f"{LLAMA_CPP_ENV}={env}: no such file or folder")
    version = _llama_cpp_python_version()
    return _cached_tree(f"llama-cpp-python-{version}", None, version), f"llama-cpp-python {version} sdist"


def _llama_cpp_python_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("llama_cpp_python")
    except PackageNotFoundError:
        log.info("export gguf: llama-cpp-python is not installed; using the converter of llama-cpp-python %s",
                 DEFAULT_LLAMA_CPP_PYTHON)
        return DEFAULT_LLAMA_CPP_PYTHON


def _cached_tree(key: str, sdist: Path | None, version: str | None = None) -> Path:
    from filelock import FileLock

    from qrdistill.models import cache_dir

    safe = "".join(c if c.isalnum() or c in "._-" else "_" for c in key)
    target = cache_dir() / f"llama.cpp-converter-{safe}"
    if (target / CONVERTER).is_file():
        return target
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        lock = FileLock(str(target) + ".lock")
    except OSError as e:
        raise QRDistillError(f"{target.parent}: cannot write the converter cache ({e.strerror or e})") from None
    with lock, tempfile.TemporaryDirectory(dir=target.parent, prefix=f".{target.name}.") as tmp:
        if (target / CONVERTER).is_file():
            return target
        if sdist is None:
            assert version is not None
            sdist = _download_sdist(version, Path(tmp))
        staged = Path(tmp) / "tree"
        _extract_converter(sdist, staged)
        if target.exists():
            shutil.rmtree(target)  # a tree without its converter: an interrupted copy of an older qrdistill
        os.replace(staged, target)
    log.info("export gguf: llama.cpp's converter is in %s", target)
    return target


def _download_sdist(version: str, into: Path) -> Path:
    spec = f"llama-cpp-python=={version}"
    cmd = [sys.executable, "-m", "pip", "download", spec, "--no-deps", "--no-binary", ":all:", "-d", str(into),
           "--quiet", "--disable-pip-version-check"]
    log.info("export gguf: fetching the source of %s for llama.cpp's converter (once; it is cached)", spec)
    try:
        proc = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True, errors="replace",
                              timeout=1200)
    except subprocess.TimeoutExpired:
        proc = None
    found = sorted(into.glob("llama_cpp_python-*.tar.gz")) + sorted(into.glob("llama-cpp-python-*.tar.gz"))
    if proc is not None and proc.returncode == 0 and found:
        return found[0]
    why = "timed out" if proc is None else (proc.stderr.strip().splitlines() or ["no output"])[-1][:200]
    raise QRDistillError(f"cannot fetch the source of {spec}, which holds llama.cpp's converter ({why}); offline, "
                         f"set {LLAMA_CPP_ENV} to a llama.cpp checkout or a llama-cpp-python sdist (.tar.gz)")


def _extract_converter(sdist: Path, dest: Path) -> None:
    """Only the converter's files, and only regular files and folders under the vendored llama.cpp."""
    try:
        with tarfile.open(sdist, "r:*") as tar:
            members = tar.getmembers()
            # llama-cpp-python's sdist: <name>/vendor/llama.cpp/; a llama.cpp source archive: <name>/.
            roots = [m.name[: -len(CONVERTER)] for m in members
                     if m.isfile() and (m.name == CONVERTER or m.name.endswith("/" + CONVERTER))]
            if not roots:
                raise QRDistillError(f"{sdist}: no {CONVERTER} in it (expected llama-cpp-python's sdist, which "
                                     "vendors llama.cpp)")
            root = min(roots, key=len)
            dest.mkdir(parents=True)
            for m in members:
                rel = m.name[len(root):] if m.name.startswith(root) else None
                if not rel or not (m.isfile() or m.isdir()) or not any(
                        rel == p or (p.endswith("/") and rel.startswith(p)) for p in CONVERTER_PARTS):
                    continue
                target = (dest / rel).resolve()
                if dest.resolve() not in target.parents:
                    continue  # ".." in a member name: never written outside the tree
                if m.isdir():
                    target.mkdir(parents=True, exist_ok=True)
                    continue
                target.parent.mkdir(parents=True, exist_ok=True)
                src = tar.extractfile(m)
                if src is not None:
                    with src, open(target, "wb") as f:
                        shutil.copyfileobj(src, f)
    except (tarfile.TarError, OSError) as e:
        raise QRDistillError(f"{sdist}: cannot read the llama.cpp sources in it ({e})") from None
    if not (dest / CONVERTER).is_file():
        raise QRDistillError(f"{sdist}: no {CONVERTER} in it")


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()

