"""The numba kernel of the clipped stack, and the small helpers around it.

The clipped stack itself is described in docs/reference.md, 'The clipped stack'.

What the kernel computes, per pixel over the N frames' values (NaN = missing): the median m,
the 16th and 84th percentiles with NumPy's default ('linear') interpolation, the half width
s = 0.5 * (p84 - p16), the values kept (m - k*s <= x <= m + k*s), and the mean, the number
and the clip-corrected standard error of the kept values. :mod:`kpfmasters.science.stack` is the
public API; this module is its engine.

How it runs
-----------
The band buffer ``buf`` has shape (N, rows, cols): native float32 / float64 values, or the
big-endian bytes of float32 / float64 FITS data read straight from the files (uint32 / uint64;
the kernel swaps and reinterprets them as it reads, so no separate conversion pass is made).
The kernel spreads work items (one row, up to ``BLOCK`` columns) over the numba threads
(``prange``) and walks each item in tiles of ``tile`` pixels (64, fewer only for very large N)
so that a tile's values stay in the L1/L2 cache. For a tile it

1. copies the N x tile values into scratch: float64 originals, and a sort copy in the input's
   precision (float32 inputs sort as float32: exact) where NaN becomes +inf, which sorts
   after every valid value; the number of valid values n is counted per pixel,
2. sorts the sort copy with a *sorting network* applied to all pixels of the tile at once:
   each comparator (a, b) is a branch-free min/max over the tile's row a and row b, which LLVM
   turns into SIMD instructions (about 0.2 to 0.3 cycles per value and comparator). The
   network is Batcher's odd-even merge sort for N (165 comparators for N = 30, 958 for 100);
   when every pixel of the tile has all N values, only the comparators that can influence the
   ranks the percentiles and the median read are kept (``prune_network``), otherwise the full
   network runs so that every n <= N is sorted,
3. reads the order statistics at the ranks NumPy would use for n values (tables made by
   :func:`rank_tables`, replaying NumPy's own index and interpolation arithmetic), and
4. makes two passes over the original values in frame order: sum and count of the kept
   values, then the sum of squared deviations from their mean (never negative).

Every pixel's result depends only on its own N values, never on the tile, block, band or
thread it was computed in, so results are identical (bit for bit) for any band height and
thread count. (The sign of a zero median can depend on the order a network met equal values;
the clip decisions compare with <=, so it never changes them, and the outputs are computed from
the original values.)

Agreement with NumPy
--------------------
``np.nanmedian`` takes the mean of the two middle values for an even count, ``(a + b) / 2``,
and the middle value for an odd count. ``np.nanpercentile(..., method='linear')`` uses the
virtual index ``(n - 1) * q`` (``q = 16 / 100`` and ``84 / 100``), ``i = floor(index)``,
``gamma = index - i`` (with NumPy's quirk that when ``index >= n - 1`` both neighbours are the
last value and ``i`` is taken as -1 for gamma), and ``_lerp``: ``a + (b - a) * gamma``, or
``b - (b - a) * (1 - gamma)`` when ``gamma >= 0.5``. The kernel does exactly those float64
operations (numba does not contract them into fused multiply-adds without fastmath), so its
clip thresholds, and hence its clip decisions, are bit-identical to NumPy's. The only known
difference: for an odd count NumPy's masked median (``nanmedian`` with fewer than 600 frames)
computes ``(x + x) / 2``, which overflows for ``|x| > 8.98e307``; the kernel returns ``x``.

What numba costs a user
-----------------------
Each kernel variant (buffer dtype: uint32 for float32 files without preprocessing, float64 with
a preprocess, float32 / float64 for in-memory cubes) is compiled the first time it is used in
a fresh environment, and the machine code is cached on disk (``cache=True``). Measured on the
2-core development machine (numba 0.68; ``bench/bench_stack.py`` measures it again on each
run and records it in ``bench/RESULTS.md``): with an empty cache a first ``kpfmasters stack``
on three tiny files takes 4 to 7 s, against 0.8 to 1.4 s with a warm cache (interpreter and
imports included), so compiling a variant costs 3.5 to 5 s, once; with a warm cache a process
pays about 0.25 s the first time it calls a kernel (numba's typing and threading runtime
start-up plus loading the cached code), then nothing. The cache lives in the package's
``__pycache__`` when that is writable, else in numba's user-wide cache directory
(``~/.cache/numba``); when neither can be written and ``NUMBA_CACHE_DIR`` is unset, this
module sets it to a private directory under the system temporary directory, and when no cache
directory works at all it compiles without a cache (correct, just a compile in every process).
"""

from __future__ import annotations

import functools
import math
import os
import sys
import tempfile
from collections.abc import Callable

import numpy as np

# Quantiles of the clipped stack (p16, p84), computed as np.percentile computes them (q / 100).
Q16 = 16 / 100
Q84 = 84 / 100
# Columns per parallel work item: small enough for many items per band row, large enough to
# amortise the scratch allocation.
BLOCK = 512


def cache_fallback(package_dir: str, environ) -> str | None:
    """The ``NUMBA_CACHE_DIR`` to set so numba can cache, or None when no change is needed.

    numba tries, in order, ``NUMBA_CACHE_DIR``, the package's ``__pycache__`` and a user-wide
    directory (``$XDG_CACHE_HOME/numba`` or ``~/.cache/numba``). When the variable is unset and
    neither directory can be written, the fallback is ``<tmp>/kpfmasters-numba-<uid>``.

    Parameters
    ----------
    package_dir : str
        Directory of this module (its ``__pycache__`` is numba's first choice).
    environ : mapping
        The environment (``os.environ``); read only.

    Returns
    -------
    str or None
        The fallback directory (made when missing); None when numba already has a writable
        cache directory, or when the fallback cannot be written either.
    """
    if environ.get("NUMBA_CACHE_DIR"):
        return None
    if _writable_dir(os.path.join(package_dir, "__pycache__")):
        return None
    home = environ.get("HOME") or os.path.expanduser("~")
    xdg = environ.get("XDG_CACHE_HOME") or os.path.join(home, ".cache")
    if _writable_dir(os.path.join(xdg, "numba")):
        return None
    uid = os.getuid() if hasattr(os, "getuid") else "user"
    fallback = os.path.join(tempfile.gettempdir(), f"kpfmasters-numba-{uid}")
    return fallback if _writable_dir(fallback) else None


def _configure_cache() -> None:
    """Apply :func:`cache_fallback` before numba reads its configuration."""
    fallback = cache_fallback(os.path.dirname(os.path.abspath(__file__)), os.environ)
    if fallback is not None:
        os.environ["NUMBA_CACHE_DIR"] = fallback
        if "numba" in sys.modules:  # already configured by an earlier import: re-read
            try:
                from numba.core import config

                config.reload_config()
            except Exception:  # pragma: no cover - numba internals moved; caching is optional
                pass


def _writable_dir(path: str) -> bool:
    try:
        os.makedirs(path, exist_ok=True)
    except OSError:
        return False
    return os.access(path, os.W_OK | os.X_OK)


_configure_cache()

import numba  # noqa: E402  (after the cache directory is settled)
from numba import njit, prange  # noqa: E402
from numba.core import types  # noqa: E402
from numba.extending import intrinsic  # noqa: E402


def _jit(**options) -> Callable:
    """``numba.njit(cache=True, **options)``, or without a cache when no locator works."""

    def decorate(func):
        try:
            return njit(cache=True, error_model="numpy", **options)(func)
        except RuntimeError:  # "cannot cache function ...: no locator available"
            return njit(cache=False, error_model="numpy", **options)(func)

    return decorate


@intrinsic
def _decode(typingctx, value):
    """A buffer element as a float: uint32 / uint64 hold big-endian float32 / float64 bits
    (FITS data as read from the file: byte-swapped, then reinterpreted, no conversion);
    float32 / float64 pass through."""
    if isinstance(value, types.Integer) and not value.signed and value.bitwidth in (32, 64):
        result = types.float32 if value.bitwidth == 32 else types.float64

        def codegen(context, builder, signature, args):
            bswap = builder.module.declare_intrinsic("llvm.bswap", [args[0].type])
            swapped = builder.call(bswap, [args[0]])
            return builder.bitcast(swapped, context.get_value_type(result))

        return result(value), codegen
    if isinstance(value, types.Float):

        def identity(context, builder, signature, args):
            return args[0]

        return value(value), identity
    return None


@intrinsic
def _pointer(typingctx, address, proto):
    """The integer ``address`` as a typed pointer to elements of ``proto``'s dtype."""
    if not isinstance(address, types.Integer) or not isinstance(proto, types.Array):
        return None
    pointer = types.CPointer(proto.dtype)

    def codegen(context, builder, signature, args):
        return builder.inttoptr(args[0], context.get_value_type(pointer))

    return pointer(address, proto), codegen


#: Buffer dtype for each kind of input: raw big-endian file bytes, or native floats.
RAW_BUFFER = {np.dtype(">f4"): np.dtype(np.uint32), np.dtype(">f8"): np.dtype(np.uint64)}
BUFFER_DTYPES = (np.uint32, np.uint64, np.float32, np.float64)


def sort_dtype(buffer_dtype) -> np.dtype:
    """Precision the kernel sorts a buffer's values in: that of the values (exact).

    Parameters
    ----------
    buffer_dtype : dtype-like
        One of :data:`BUFFER_DTYPES`.

    Returns
    -------
    numpy.dtype
        float32 for uint32 (big-endian float32 bits) and float32 buffers, else float64.
    """
    dt = np.dtype(buffer_dtype)
    return np.dtype(np.float32) if dt in (np.uint32, np.float32) else np.dtype(np.float64)


# --------------------------------------------------------------------------------------------
# Sorting networks and NumPy's ranks
# --------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=64)
def batcher_network(n: int) -> tuple[np.ndarray, np.ndarray]:
    """Comparators of Batcher's odd-even merge sort for ``n`` values.

    Built for the next power of two; comparators that touch an index >= n are dropped
    (equivalent to padding with +inf, which no comparator moves). About n/4 * log2(n)^2
    comparators.

    Parameters
    ----------
    n : int
        Number of values to sort (>= 0).

    Returns
    -------
    a, b : ndarray, int32, shape (ncomparators,)
        With ``a[c] < b[c]``: applying ``x[a], x[b] = min, max`` for c in order sorts any
        ``n`` values ascending.

    Raises
    ------
    ValueError
        When ``n`` is negative.
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    size = 1
    while size < n:
        size *= 2
    pairs: list[tuple[int, int]] = []
    p = 1
    while p < size:
        k = p
        while k >= 1:
            for j in range(k % p, size - k, 2 * k):
                for i in range(min(k, size - j - k)):
                    lo, hi = i + j, i + j + k
                    if lo // (2 * p) == hi // (2 * p) and hi < n:
                        pairs.append((lo, hi))
            k //= 2
        p *= 2
    arr = np.array(pairs, dtype=np.int32).reshape(-1, 2)
    return np.ascontiguousarray(arr[:, 0]), np.ascontiguousarray(arr[:, 1])


def prune_network(a: np.ndarray, b: np.ndarray, ranks) -> tuple[np.ndarray, np.ndarray]:
    """Keep only the comparators that can influence the values at ``ranks`` after sorting.

    Walking the network backwards, a comparator matters when either of its wires is read later
    (by a kept comparator or as an output); then both its inputs matter. The values the pruned
    network leaves at ``ranks`` are exactly those of the full network.

    Parameters
    ----------
    a, b : ndarray, int32, shape (ncomparators,)
        A sorting network (:func:`batcher_network`).
    ranks : iterable of int
        The ranks (0-based positions after sorting) that are read.

    Returns
    -------
    a, b : ndarray, int32, shape (nkept,)
        The comparators kept, in their original order (C-contiguous copies).
    """
    needed = set(int(r) for r in ranks)
    keep = np.zeros(len(a), dtype=bool)
    for c in range(len(a) - 1, -1, -1):
        if int(a[c]) in needed or int(b[c]) in needed:
            keep[c] = True
            needed.add(int(a[c]))
            needed.add(int(b[c]))
    return np.ascontiguousarray(a[keep]), np.ascontiguousarray(b[keep])


def _percentile_index(n: int, q: float) -> tuple[int, int, float]:
    """(previous index, next index, gamma) of NumPy's 'linear' quantile for n sorted values.

    Replays ``numpy.lib._function_base_impl._quantile`` / ``_get_indexes`` / ``_get_gamma``:
    virtual index ``(n - 1) * q``; an index at or above ``n - 1`` reads the last value twice
    and counts its previous index as -1 when computing gamma.
    """
    virtual = (n - 1) * q
    previous = math.floor(virtual)
    following = previous + 1
    gamma_base = float(previous)
    if virtual >= n - 1:
        previous = following = n - 1
        gamma_base = -1.0
    if virtual < 0:
        previous = following = 0
    gamma = virtual - gamma_base
    return previous, following, gamma


@functools.lru_cache(maxsize=64)
def rank_tables(nmax: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per valid count n = 0..nmax, the ranks and weights the kernel reads.

    Parameters
    ----------
    nmax : int
        The largest count: the number of frames.

    Returns
    -------
    med_lo, med_hi : ndarray, int64, shape (nmax + 1,)
        The two middle ranks of n values (equal for odd n).
    q_lo, q_hi : ndarray, int64, shape (2, nmax + 1)
        The neighbouring ranks of p16 (row 0) and p84 (row 1).
    q_gamma : ndarray, float64, shape (2, nmax + 1)
        Their interpolation weights, as NumPy's 'linear' method computes them.

    Index n = 0 is unused (all-missing pixels give NaN).
    """
    med_lo = np.zeros(nmax + 1, dtype=np.int64)
    med_hi = np.zeros(nmax + 1, dtype=np.int64)
    q_lo = np.zeros((2, nmax + 1), dtype=np.int64)
    q_hi = np.zeros((2, nmax + 1), dtype=np.int64)
    q_g = np.zeros((2, nmax + 1), dtype=np.float64)
    for n in range(1, nmax + 1):
        half = n // 2
        med_lo[n], med_hi[n] = (half, half) if n % 2 else (half - 1, half)
        for row, q in enumerate((Q16, Q84)):
            q_lo[row, n], q_hi[row, n], q_g[row, n] = _percentile_index(n, q)
    return med_lo, med_hi, q_lo, q_hi, q_g


@functools.lru_cache(maxsize=64)
def networks(nframes: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The sorting networks of the kernel for ``nframes`` frames.

    The pruned network serves tiles where every pixel has all values; the full one the rest.

    Parameters
    ----------
    nframes : int
        N, the frames stacked (>= 1).

    Returns
    -------
    tuple of four ndarray, int32
        ``(pruned a, pruned b, full a, full b)``: the comparators that can influence the
        median, p16 and p84 of N values (:func:`prune_network`), and the full network
        (:func:`batcher_network`).
    """
    full_a, full_b = batcher_network(nframes)
    med_lo, med_hi, q_lo, q_hi, _ = rank_tables(nframes)
    n = nframes
    ranks = {med_lo[n], med_hi[n], q_lo[0, n], q_hi[0, n], q_lo[1, n], q_hi[1, n]}
    pa, pb = prune_network(full_a, full_b, ranks)
    return pa, pb, full_a, full_b


def tile_width(nframes: int) -> int:
    """Pixels per tile: 64, fewer only when the tile's scratch (12 bytes a value) tops 512 KiB.

    64 measured best for N = 10 to 100 on the development machine (the sorting network runs
    at about 0.2 cycles per value and comparator with 64-pixel rows).

    Parameters
    ----------
    nframes : int
        N, the frames stacked.

    Returns
    -------
    int
        Tile width in pixels: a multiple of 8 in 8..64.
    """
    width = (512 * 1024) // (12 * max(nframes, 1))
    return int(min(64, max(8, width // 8 * 8)))


# --------------------------------------------------------------------------------------------
# The kernel
# --------------------------------------------------------------------------------------------


@_jit(parallel=True, nogil=True)
def _stack_rows(
    frames,
    row_bytes,
    proto_in,
    proto,
    nrows,
    ncols,
    net_a,
    net_b,
    full_a,
    full_b,
    med_lo,
    med_hi,
    q_lo,
    q_hi,
    q_g,
    nsigma,
    cf,
    tile,
    avg,
    unc,
    cnt,
    rejected,
    want_limits,
    limits,
):
    """Clipped stack of rows ``[0, nrows)`` of N frames into avg/unc/cnt.

    Frame i's row r starts at address ``frames[i] + r * row_bytes`` and holds ``ncols``
    elements of ``proto_in``'s dtype: native float32/float64 values, or big-endian float bits
    as uint32/uint64 (see :func:`_decode`). The caller keeps that memory alive and readable.
    ``proto`` is any array of the dtype to sort in (:func:`sort_dtype`).
    Work items (one band row, up to ``BLOCK`` columns) are spread over the threads; each walks
    its columns in tiles of ``tile`` pixels whose N x tile values stay in the L1/L2 cache.
    ``avg`` float64, ``unc`` float32, ``cnt`` int32, each (>= nrows, cols); ``rejected`` int64
    (nrows * items per row) gets the number of valid values the clip rejected, per item. When
    ``want_limits``, ``limits`` float64 (2, >= nrows, cols) gets the clip limits m -/+ k*s.

    Array indices are made unsigned where numba cannot prove them non-negative: its
    negative-index wraparound on signed indices would stop LLVM from vectorising the loops.
    """
    nfr = frames.shape[0]
    itemsize = proto_in.itemsize
    per_row = (ncols + BLOCK - 1) // BLOCK
    nitems = nrows * per_row
    # ranks and weights when every value of a pixel is valid (the common case)
    ml = np.uint64(med_lo[nfr])
    mh = np.uint64(med_hi[nfr])
    odd = med_lo[nfr] == med_hi[nfr]
    l16 = np.uint64(q_lo[0, nfr])
    h16 = np.uint64(q_hi[0, nfr])
    g16 = q_g[0, nfr]
    l84 = np.uint64(q_lo[1, nfr])
    h84 = np.uint64(q_hi[1, nfr])
    g84 = q_g[1, nfr]
    for item in prange(nitems):
        r = item // per_row
        c_begin = (item % per_row) * BLOCK
        c_end = min(c_begin + BLOCK, ncols)
        srt = np.empty((nfr, tile), dtype=proto.dtype)  # sorts in the input's precision
        orig = np.empty((nfr, tile), dtype=np.float64)
        nvalid = np.empty(tile, dtype=np.int64)
        kept = np.empty(tile, dtype=np.int64)
        low = np.empty(tile, dtype=np.float64)
        high = np.empty(tile, dtype=np.float64)
        acc = np.empty(tile, dtype=np.float64)
        mean = np.empty(tile, dtype=np.float64)
        nrej = 0
        for c0 in range(c_begin, c_end, tile):
            w = min(tile, c_end - c0)
            # 1. gather: original values, sort copy (NaN -> +inf), valid counts
            for p in range(w):
                nvalid[p] = 0
            for i in range(nfr):
                src = _pointer(frames[i] + r * row_bytes + c0 * itemsize, proto_in)
                for p in range(w):
                    raw = _decode(src[p])
                    missing = raw != raw
                    orig[i, p] = np.float64(raw)
                    srt[i, p] = np.inf if missing else raw
                    nvalid[p] += 0 if missing else 1
            complete = True
            for p in range(w):
                if nvalid[p] != nfr:
                    complete = False
            # 2. sorting network over the tile, one comparator at a time, SIMD over pixels
            ca = net_a if complete else full_a
            cb = net_b if complete else full_b
            for c in range(ca.shape[0]):
                ra = np.uint64(ca[c])
                rb = np.uint64(cb[c])
                for p in range(w):
                    x = srt[ra, p]
                    y = srt[rb, p]
                    srt[ra, p] = x if x < y else y
                    srt[rb, p] = y if x < y else x
            # 3. median, percentiles, clip limits (NumPy's arithmetic, see module docstring)
            if complete:
                for p in range(w):
                    x = np.float64(srt[ml, p])
                    med = x if odd else (x + np.float64(srt[mh, p])) / 2.0
                    a = np.float64(srt[l16, p])
                    b = np.float64(srt[h16, p])
                    d = b - a
                    p16 = b - d * (1.0 - g16) if g16 >= 0.5 else a + d * g16
                    a = np.float64(srt[l84, p])
                    b = np.float64(srt[h84, p])
                    d = b - a
                    p84 = b - d * (1.0 - g84) if g84 >= 0.5 else a + d * g84
                    half = 0.5 * (p84 - p16)
                    low[p] = med - nsigma * half
                    high[p] = med + nsigma * half
            else:
                for p in range(w):
                    n = nvalid[p]
                    if n == 0:
                        low[p] = np.nan
                        high[p] = np.nan
                        continue
                    x = np.float64(srt[med_lo[n], p])
                    if med_lo[n] == med_hi[n]:
                        med = x
                    else:
                        med = (x + np.float64(srt[med_hi[n], p])) / 2.0
                    g = q_g[0, n]
                    a = np.float64(srt[q_lo[0, n], p])
                    b = np.float64(srt[q_hi[0, n], p])
                    d = b - a
                    p16 = b - d * (1.0 - g) if g >= 0.5 else a + d * g
                    g = q_g[1, n]
                    a = np.float64(srt[q_lo[1, n], p])
                    b = np.float64(srt[q_hi[1, n], p])
                    d = b - a
                    p84 = b - d * (1.0 - g) if g >= 0.5 else a + d * g
                    half = 0.5 * (p84 - p16)
                    low[p] = med - nsigma * half
                    high[p] = med + nsigma * half
            if want_limits:
                for p in range(w):
                    limits[0, r, np.uint64(c0 + p)] = low[p]
                    limits[1, r, np.uint64(c0 + p)] = high[p]
            # 4. mean of the kept values, then their squared deviations (two passes)
            for p in range(w):
                acc[p] = 0.0
                kept[p] = 0
            for i in range(nfr):
                for p in range(w):
                    v = orig[i, p]
                    keep = (v >= low[p]) & (v <= high[p])
                    acc[p] += v if keep else 0.0
                    kept[p] += 1 if keep else 0
            for p in range(w):
                mean[p] = acc[p] / kept[p]  # NaN when nothing is kept (error_model numpy)
                acc[p] = 0.0
            for i in range(nfr):
                for p in range(w):
                    v = orig[i, p]
                    keep = (v >= low[p]) & (v <= high[p])
                    dev = v - mean[p]
                    acc[p] += dev * dev if keep else 0.0
            for p in range(w):
                k = kept[p]
                col = np.uint64(c0 + p)
                cnt[r, col] = k
                nrej += nvalid[p] - k
                avg[r, col] = mean[p]
                unc[r, col] = np.float32(np.sqrt(cf * (acc[p] / k) / k))
        rejected[item] = nrej


def stack_rows(
    buf: np.ndarray,
    nrows: int,
    nsigma: float,
    cf: float,
    avg: np.ndarray,
    unc: np.ndarray,
    cnt: np.ndarray,
    threads: int | None = None,
    limits: np.ndarray | None = None,
) -> int:
    """Run the kernel on rows ``[0, nrows)`` of ``buf``; return the number of values rejected.

    Parameters
    ----------
    buf : ndarray, shape (N, rows, cols), C-contiguous
        The band of N frames (NaN = missing), not modified: native float32 or float64, or
        the big-endian bytes of float32 / float64 FITS data as uint32 / uint64 (the kernel
        swaps them as it reads).
    nrows : int
        Rows of ``buf`` to use (a last band may be shorter than the buffer).
    nsigma, cf : float
        The clip k and the variance correction cf(k).
    avg, unc, cnt : ndarray (nrows, cols), float64 / float32 / int32, C-contiguous
        Outputs, written in place.
    threads : int or None
        numba threads for this call (clamped to 1..``numba.config.NUMBA_NUM_THREADS``); None
        keeps numba's current setting. The previous setting is restored afterwards.
    limits : ndarray float64 (2, nrows, cols), C-contiguous, or None
        When given, receives the clip limits m - k*s (row 0) and m + k*s (row 1) per pixel
        (NaN where no value is valid); for tests and diagnostics.

    Returns
    -------
    int
        Valid (non-NaN) values rejected by the clip, summed over the rows' pixels.

    Raises
    ------
    TypeError
        When ``buf`` or an output has the wrong dtype, dimensions or layout.
    ValueError
        When ``nrows`` is outside 0..rows.
    """
    if buf.dtype not in BUFFER_DTYPES or buf.ndim != 3 or not buf.flags.c_contiguous:
        raise TypeError("buf must be a C-contiguous 3-D float32/float64/uint32/uint64 array")
    nframes, rows, ncols = buf.shape
    if not 0 <= nrows <= rows:
        raise ValueError(f"nrows must be in 0..{rows}, got {nrows}")
    base = buf.ctypes.data
    frames = np.array([base + i * buf.strides[0] for i in range(nframes)], dtype=np.int64)
    return stack_frames(
        frames,
        buf.strides[1],
        buf.dtype,
        nrows,
        ncols,
        nsigma,
        cf,
        avg,
        unc,
        cnt,
        threads,
        limits,
        keepalive=buf,
    )


def stack_frames(
    frames: np.ndarray,
    row_bytes: int,
    dtype,
    nrows: int,
    ncols: int,
    nsigma: float,
    cf: float,
    avg: np.ndarray,
    unc: np.ndarray,
    cnt: np.ndarray,
    threads: int | None = None,
    limits: np.ndarray | None = None,
    keepalive=None,
) -> int:
    """Run the kernel on N frames given by address; return the number of values rejected.

    This is how :func:`kpfmasters.science.stack.stack_files` stacks straight from
    memory-mapped files, without copying them into a buffer.

    Parameters
    ----------
    frames : ndarray, int64, shape (N,), N >= 1
        The address of row 0 of each frame's band. The memory must stay mapped and
        readable during the call (the caller holds it).
    row_bytes : int
        Bytes from one row of a frame to the next (>= ``ncols * dtype.itemsize``).
    dtype : dtype-like
        Element type of the frames, one of :data:`BUFFER_DTYPES` (uint32 / uint64: the
        big-endian bits of float32 / float64 FITS data).
    nrows, ncols : int
        Rows and columns (pixels) of the band.
    nsigma, cf, avg, unc, cnt, threads, limits
        As in :func:`stack_rows`.
    keepalive : object, optional
        Only kept referenced during the call (e.g. the buffer the addresses point into).

    Returns
    -------
    int
        Valid (non-NaN) values rejected by the clip, summed over the band's pixels.

    Raises
    ------
    TypeError
        When ``dtype`` or an output has the wrong dtype, dimensions or layout.
    ValueError
        When no frame is given or ``row_bytes`` is too small.
    """
    dtype = np.dtype(dtype)
    frames = np.ascontiguousarray(frames, dtype=np.int64)
    nframes = frames.shape[0]
    if nframes < 1:
        raise ValueError("at least one frame is needed")
    if dtype not in BUFFER_DTYPES:
        raise TypeError(f"frames must hold float32/float64/uint32/uint64, not {dtype}")
    if row_bytes < ncols * dtype.itemsize:
        raise ValueError(f"row_bytes {row_bytes} is less than {ncols} x {dtype.itemsize}")
    for arr, dt in ((avg, np.float64), (unc, np.float32), (cnt, np.int32)):
        if (
            arr.dtype != dt
            or arr.ndim != 2
            or not arr.flags.c_contiguous
            or arr.shape[0] < nrows
            or arr.shape[1] != ncols
        ):
            raise TypeError(f"output must be {np.dtype(dt).name} with shape ({nrows}, {ncols})")
    if limits is not None and (
        limits.dtype != np.float64
        or not limits.flags.c_contiguous
        or limits.shape[0] != 2
        or limits.shape[1] < nrows
        or limits.shape[2] != ncols
    ):
        raise TypeError(f"limits must be C-contiguous float64 with shape (2, {nrows}, {ncols})")
    if nrows == 0 or ncols == 0:
        return 0
    pa, pb, fa, fb = networks(nframes)
    med_lo, med_hi, q_lo, q_hi, q_g = rank_tables(nframes)
    per_row = (ncols + BLOCK - 1) // BLOCK
    rejected = np.zeros(nrows * per_row, dtype=np.int64)
    previous = numba.get_num_threads()
    if threads is not None:
        numba.set_num_threads(max(1, min(int(threads), numba.config.NUMBA_NUM_THREADS)))
    try:
        _stack_rows(
            frames,
            int(row_bytes),
            np.empty(1, dtype=dtype),
            np.empty(1, dtype=sort_dtype(dtype)),
            nrows,
            ncols,
            pa,
            pb,
            fa,
            fb,
            med_lo,
            med_hi,
            q_lo,
            q_hi,
            q_g,
            float(nsigma),
            float(cf),
            tile_width(nframes),
            avg,
            unc,
            cnt,
            rejected,
            limits is not None,
            limits if limits is not None else np.empty((2, 1, 1)),
        )
    finally:
        numba.set_num_threads(previous)
    del keepalive
    return int(rejected.sum())
