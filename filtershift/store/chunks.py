"""Checked reads of a store's chunks: every committed row comes from its own chunk, whole and unchanged, or the
read fails with a ``StoreError`` that names the store, the array and the chunk. A committed row is never filled.

Per chunk holding committed rows (rows below the manifest's ``n_filters``):

- it must exist: zarr returns the fill value for a missing chunk, so zarr reads go through a store wrapper that
  raises instead, and the direct reader treats a missing file the same way. Schema 2 writes every chunk (its
  arrays carry the attribute ``all_chunks_written``), so there an absent chunk is always an error. Schema 1 has one
  exception: a chunk the writer never wrote because all its values equalled the fill value 0 (zarr skips such
  chunks) is accepted when the manifest records its sum as exactly 0.0 and the store itself is visible;
- its crc32c must match (zarr's codec, or the direct reader's one-call check);
- the float64 sum of its committed rows must equal ``integrity.chunk_sums[i]`` within the rounding bound of any
  summation order (a chunk replaced by another one carries a valid checksum).

Chunks wholly past ``n_filters`` are never requested (the lazy array is sliced to ``n_filters``).
"""

from __future__ import annotations

import mmap
import os
import socket

import numpy as np
import zarr

from filtershift.errors import StoreError
from filtershift.store import format as fmt

#: CRC-32C of any message followed by its own little-endian CRC: checks data + stored checksum in one call.
CRC32C_RESIDUE = 0x48674BC7
#: Unit roundoff of float64: the recorded and the computed sums of m values differ by at most m * U * sum(|w|).
_U = 2.0 ** -53


#: Why a read that worked in the client can fail in a dask worker: each worker reaches object storage itself.
WORKER_HINT = ("A dask worker reads the store itself: it needs the credentials too (its environment, an "
               "instance role, or storage options passed to open_store).")


#: Reads of chunks at most this far apart count as one scan, for the read-ahead hints (a pass's threads take the
#: blocks of a combine group of 8 in any order).
SCAN_WINDOW = 8


class ChunkReader:
    """Array-like over a Zarr array for ``da.from_array``; pickles to dask workers, which check the same way.

    For the layout filtershift writes by default on a local disk (no compressor, crc32c, default chunk keys)
    chunks are read straight from their files and checked here, in the calling thread: zarr's synchronous API
    funnels every read of every dask thread through one event-loop thread, which halved the read throughput of a
    threaded dask pass (see BENCHMARKS.md). Other layouts and object storage read through zarr.

    ``n_committed`` is the manifest's ``n_filters``; ``chunk_sums`` its per-chunk float64 sums (None: no sum
    check, e.g. ``filter_id``).
    """

    def __init__(self, array, loc: fmt.Location, n_committed: int, chunk_sums=None):
        self.loc, self.display, self.name, self.path = loc, loc.display, array.basename, array.path
        self.shape, self.dtype, self.ndim = array.shape, array.dtype, array.ndim
        self.rows = array.chunks[0]
        self.n = int(n_committed)
        self.sums = None if chunk_sums is None else tuple(float(s) for s in chunk_sums)
        self.fill = array.fill_value
        self.all_written = bool(array.attrs.get(fmt.ALL_CHUNKS_WRITTEN, False))
        self.direct = _direct_path(array, loc)
        self._previous = None               # the chunk read last (read-ahead runs only in sequential reads)
        self.array = None if self.direct else _strict_array(array, loc)

    def __getitem__(self, key):
        key = key if isinstance(key, tuple) else (key,)
        rows, rest = key[0], key[1:]
        if isinstance(rows, (int, np.integer)):
            r = int(rows) + (self.shape[0] if rows < 0 else 0)
            out = self.read(r, r + 1)[0]
        else:
            r = range(*rows.indices(self.shape[0]))
            if len(r) == 0:
                out = np.empty((0, *self.shape[1:]), self.dtype)
            elif r.step == 1:
                out = self.read(r.start, r.stop)
            else:
                lo = min(r[0], r[-1])
                out = self.read(lo, max(r[0], r[-1]) + 1)[np.asarray(r) - lo]
        if any(k != slice(None) for k in rest):
            out = out[(slice(None),) * (out.ndim - len(self.shape) + 1) + rest]
        return out

    def read(self, lo: int, hi: int) -> np.ndarray:
        """Rows ``[lo, hi)``: each chunk they touch is read whole and checked."""
        pieces = []
        for i in range(lo // self.rows, (hi - 1) // self.rows + 1):
            block = self.chunk(i)
            start = i * self.rows
            pieces.append(block[max(lo, start) - start:min(hi, start + self.rows) - start])
        out = pieces[0] if len(pieces) == 1 else np.concatenate(pieces)
        return out.astype(self.dtype, copy=False)

    def chunk(self, i: int) -> np.ndarray:
        """Chunk ``i`` as stored (all its rows, the last chunk of a zarr read cut at the array's end), checked."""
        start = i * self.rows
        committed = max(0, min(self.n, start + self.rows, self.shape[0]) - start)
        if self.direct:
            block = self._read_direct(i)
        else:
            with fmt.remote_errors(self.loc, f"read chunk {i} of array '{self.name}' on host {socket.gethostname()} "
                                   "from", hint=WORKER_HINT):
                block = self._read_zarr(i)
        if block is None:
            return self._absent(i, committed)
        if committed and self.sums is not None:
            self._check_sum(i, block[:committed])
        return block

    def _chunk_path(self, i: int) -> str:
        return os.path.join(self.direct, "c", str(i), *(["0"] * (len(self.shape) - 1)))

    def _prefetch(self, i: int) -> None:
        """Ask the kernel to start reading the chunk files next to chunk ``i`` (``posix_fadvise(WILLNEED)`` returns
        at once), so that the disk reads the next chunks while a pass computes on this one: pass 1 over cold chunks
        took 1.25x as long without this (BENCHMARKS.md, v1.0 scale; a pass reads runs of consecutive blocks, see
        :func:`filtershift.stats.reduction.graph`, and a chunk behind the scan is cached already, so its hint costs
        nothing). Only while reads run in sequence (this chunk within :data:`SCAN_WINDOW` of the one read before,
        as in a pass, whose threads take the blocks of a group in any order): a lookup of single filters on a cold
        store would otherwise read four chunks it never uses. A hint only: errors are ignored, and the chunk's own
        read reports a missing file."""
        previous, self._previous = self._previous, i        # threads may interleave here: it stays a heuristic
        if not hasattr(os, "posix_fadvise") or previous is None or abs(i - previous) > SCAN_WINDOW:
            return
        last = -(-self.shape[0] // self.rows) - 1
        for j in (i + 1, i - 1, i + 2, i - 2):
            if not 0 <= j <= last:
                continue
            try:
                fd = os.open(self._chunk_path(j), os.O_RDONLY)
            except OSError:
                continue
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_WILLNEED)
            except OSError:
                pass
            finally:
                os.close(fd)

    def _read_direct(self, i: int) -> np.ndarray | None:
        inner = self.shape[1:]
        nbytes = self.rows * int(np.prod(inner, dtype=np.int64)) * self.dtype.itemsize
        path = self._chunk_path(i)
        self._prefetch(i)
        try:
            raw = _read_file(path)
        except (FileNotFoundError, NotADirectoryError):
            return None
        except OSError as exc:
            raise self._unreadable(i, exc) from None
        import google_crc32c

        if len(raw) != nbytes + 4:
            what = "empty" if len(raw) == 0 else f"{len(raw):,} bytes long where {nbytes + 4:,} were written"
            raise self._error(i, f"is corrupted: the file is {what} (truncated or overwritten)")
        if google_crc32c.value(raw) != CRC32C_RESIDUE:
            raise self._error(i, "is corrupted: stored and computed checksum do not match")
        block = np.frombuffer(raw, dtype=self.dtype.newbyteorder("<"), count=nbytes // self.dtype.itemsize)
        return block.reshape(self.rows, *inner)

    def _read_zarr(self, i: int) -> np.ndarray | None:
        try:
            return self.array[i * self.rows:min((i + 1) * self.rows, self.shape[0])]
        except fmt.AbsentChunk:
            return None
        except (ValueError, RuntimeError) as exc:     # crc32c mismatch, undecodable bytes
            raise self._error(i, f"is corrupted: {self.loc.scrub(str(exc))}") from None
        except OSError as exc:
            raise self._unreadable(i, exc) from None

    def _absent(self, i: int, committed: int) -> np.ndarray:
        """A chunk with no stored object: its fill value when it holds no committed row or (schema 1 only) was
        never written because it was all zeros (recorded sum exactly 0.0); otherwise the error that says why."""
        rows = min(self.rows, self.shape[0] - i * self.rows) if not self.direct else self.rows
        filled = np.full((rows, *self.shape[1:]), self.fill, dtype=self.dtype)
        if not committed:
            return filled
        self._check_visible(i)
        local = self.loc.local_path
        if local is not None:
            key = os.path.join(local, self.path, "c", str(i), *(["0"] * (self.ndim - 1)))
            if os.path.isdir(key):
                raise self._unreadable(i, IsADirectoryError(21, "a directory stands in place of the chunk file"))
        if not self.all_written and self.sums is not None and i < len(self.sums) and self.sums[i] == 0.0 \
                and self.fill == 0:
            return filled
        raise self._error(i, "is missing, but the manifest says those filters were written")

    def _check_visible(self, i: int) -> None:
        """Raise when the store itself cannot be seen from this process (moved, deleted, or another host)."""
        local = self.loc.local_path
        if local is not None:
            if not os.path.isfile(os.path.join(local, "zarr.json")):
                raise StoreError(
                    f"{self.display}: the store directory {local} does not exist on host {socket.gethostname()} "
                    f"(chunk {i} of array '{self.name}' was to be read there). Every process of a run must see "
                    "the store at the same path: keep it in place while it is read, and for dask workers on "
                    "other hosts use object storage (s3://...) or a shared file system mounted at the same path.")
            return
        fs, root = self.loc.fs()
        if not fs.exists(f"{root}/zarr.json"):
            raise StoreError(f"{self.display}: the store no longer exists (no zarr.json) while chunk {i} of array "
                             f"'{self.name}' was read; was it deleted or moved during the run? Restore it or "
                             "convert again.")

    def _check_sum(self, i: int, part: np.ndarray) -> None:
        got, scale = chunk_sum(part)
        want = self.sums[i] if i < len(self.sums) else None
        if want is None or not sum_matches(got, scale, want, part.size):
            raise self._error(i, f"does not hold the filters written there: its values sum to {got!r}, the "
                                 f"manifest records {want!r} (its checksum is valid, so the chunk was replaced)")

    def _unreadable(self, i: int, exc: OSError) -> StoreError:
        reason = self.loc.scrub(exc.strerror or str(exc))
        return self._error(i, f"cannot be read ({reason}); check that it is a regular, readable file")

    def _error(self, i: int, what: str) -> StoreError:
        lo = i * self.rows
        hi = min(lo + self.rows, max(self.n, lo + 1))
        err = StoreError(f"{self.display}: array '{self.name}' chunk {i} (filters {lo}:{hi}) {what}. Run "
                         f"`filtershift verify {self.display}`, then restore the store from a copy or convert it "
                         "again.")
        err.problem = f"{self.name} chunk {i} (filters {lo}:{hi}) {what}"
        return err


def chunk_sum(block: np.ndarray) -> tuple[float, float]:
    """``(sum(w), sum(|w|))`` of a block in float64, in one vectorised pass (about half a CRC-32C's time)."""
    flat = np.ascontiguousarray(block).reshape(-1)
    if flat.dtype != np.float32:
        flat = flat.astype(np.float64)
    return _sums(flat)


def sum_matches(got: float, scale: float, want: float, m: int) -> bool:
    """Whether two float64 sums of the same ``m`` values may differ only by summation order: by at most
    ``m * u * sum(|w|)`` (the bound of the worst order; still about 1e-10 of the sum of |w| for a 9 MiB chunk,
    far below what a replaced chunk or a changed value of it shifts). Non-finite sums must be equal."""
    if np.isfinite(got) and np.isfinite(want):
        return abs(got - want) <= (m + 2) * _U * scale
    return got == want or (np.isnan(got) and np.isnan(want))


def _sums_loop(a):
    s = 0.0
    t = 0.0
    for j in range(a.size):
        v = np.float64(a[j])
        s += v
        t += abs(v)
    return s, t


_SUMS = None


def _sums(flat: np.ndarray) -> tuple[float, float]:
    """The loop compiled on first use (numba is imported only when a chunk is checked), reassociated so that it
    vectorises: order does not matter to a comparison within the rounding bound of any order."""
    global _SUMS
    if _SUMS is None:
        import numba

        try:
            _SUMS = numba.njit(nogil=True, cache=True, fastmath={"reassoc", "nsz"})(_sums_loop)
        except RuntimeError:                # no writable cache directory (a read-only install): compile each time
            _SUMS = numba.njit(nogil=True, fastmath={"reassoc", "nsz"})(_sums_loop)
    s, t = _SUMS(flat)
    return float(s), float(t)


def _strict_array(array, loc: fmt.Location):
    """``array`` opened again through :class:`~filtershift.store.format.StrictChunks` (one metadata read)."""
    store = fmt.StrictChunks(loc.zarr_store(read_only=True), f"{array.path}/")
    return zarr.open_array(store=store, path=array.path, mode="r", zarr_format=3)


def _read_file(path: str):
    """A chunk file's bytes as a read-only array: memory-mapped (pages prefaulted) on POSIX, which saves the
    kernel zeroing and copying a fresh buffer per chunk (the figure: BENCHMARKS.md, first paragraph). Every writer
    (filtershift, zarr's local store) replaces chunk files by a rename, so a mapped file never changes under a
    reader; a program truncating a chunk file in place while it is read would end the reader with SIGBUS."""
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if size and os.name == "posix":
            try:
                m = mmap.mmap(f.fileno(), size, prot=mmap.PROT_READ,
                              flags=mmap.MAP_SHARED | getattr(mmap, "MAP_POPULATE", 0))
            except (OSError, ValueError):
                pass
            else:
                return np.frombuffer(m, np.uint8)
        return np.frombuffer(f.read(), np.uint8)


def _direct_path(array, loc: fmt.Location) -> str | None:
    """The array's directory when its chunks are plain little-endian bytes + crc32c in default keys on a local
    disk (what filtershift writes with codec 'none'); None otherwise."""
    if loc.local_path is None:
        return None
    meta = array.metadata.to_dict()
    codecs = [c.get("name") if isinstance(c, dict) else c for c in meta.get("codecs", [])]
    first = meta.get("codecs", [{}])[0]
    endian = first.get("configuration", {}).get("endian", "little") if isinstance(first, dict) else None
    keys = meta.get("chunk_key_encoding", {})
    if codecs != ["bytes", "crc32c"] or endian != "little" or keys.get("name") != "default" or \
            keys.get("configuration", {}).get("separator", "/") != "/":
        return None
    return os.path.join(loc.local_path, array.path)
