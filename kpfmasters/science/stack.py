"""The clipped stack: in memory, or streamed from FITS files in row bands.

The rule and its choices are described in docs/reference.md, 'The clipped stack'.

Per pixel, over the N frames' values x_i (NaN = missing): m = median, p16 and p84 = the 16th
and 84th percentiles with NumPy's default linear interpolation, s = 0.5 * (p84 - p16); keep
the x_i with m - k*s <= x_i <= m + k*s; AVG = mean of the kept values, CNT = their number,
UNC = sqrt(cf(k) * var_kept / CNT) with var_kept their population variance and cf(k) the
variance lost by clipping a normal distribution (:func:`clip_correction`). CNT = 0 gives NaN
AVG and UNC. Arithmetic is float64 whatever the input precision.

- :func:`stack_cube` stacks an (N, rows, cols) array in memory.
- :func:`stack_files` streams one image extension of N FITS files in row bands, so memory
  does not grow with N beyond the band buffer (``memory_mb``), optionally calibrating each
  frame's band on the way (``preprocess``).
- ``tests/reference.py`` holds a plain NumPy implementation of the same rule, for tests.

Both run the numba kernel of :mod:`kpfmasters.science.stack_kernel`; results are bit for bit
the same for any band height and thread count.
"""

from __future__ import annotations

import logging
import math
import mmap
import os
import threading
import warnings
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from astropy.io import fits
from astropy.utils.exceptions import AstropyUserWarning

from kpfmasters.core.errors import InputError
from kpfmasters.science.stack_kernel import RAW_BUFFER, stack_frames, stack_rows

log = logging.getLogger(__name__)

#: c = k * ROBUST_SCALE converts the clip k (in units of s = half the p16..p84 width) to
#: standard deviations of a normal distribution (docs/reference.md, 'The clipped stack').
ROBUST_SCALE = 0.9944579

#: BITPIX of FITS integer images -> their stored (big-endian) dtype
FITS_INTS = {8: "u1", 16: ">i2", 32: ">i4", 64: ">i8"}

Preprocess = Callable[[int, slice, np.ndarray], "np.ndarray | None"]


@dataclass
class StackResult:
    """Result of a clipped stack.

    Attributes
    ----------
    avg : ndarray, float64, shape (rows, cols)
        Mean of the kept values (NaN where CNT = 0), in the inputs' units.
    unc : ndarray, float32, shape (rows, cols)
        Standard error of ``avg``: sqrt(cf(k) * var_kept / CNT) (NaN where CNT = 0).
    cnt : ndarray, int32, shape (rows, cols)
        Number of values kept.
    nrejected : int
        Valid (non-NaN) values rejected by the clip, summed over all pixels (for QA).
    low, high : ndarray float64 (rows, cols) or None
        The clip limits m - k*s and m + k*s, only when asked for (``limits=True``).
    """

    avg: np.ndarray
    unc: np.ndarray
    cnt: np.ndarray
    nrejected: int = 0
    low: np.ndarray | None = None
    high: np.ndarray | None = None


def clip_correction(nsigma: float) -> float:
    """The variance correction cf(k) of the clipped stack.

    cf(k) = 1 / (1 - 2 c phi(c) / (2 Phi(c) - 1)), c = k * 0.9944579: the factor by which
    the variance of a unit normal shrinks when it is clipped at +/- c, inverted; multiplying
    the kept values' variance by it restores the variance before clipping.
    ``2 Phi(c) - 1 = erf(c / sqrt(2))``. cf(2.1) = 1.24289, cf(2.4) = 1.12646.

    Parameters
    ----------
    nsigma : float
        The clip k (> 0, finite), in units of s = half the p16..p84 width.

    Returns
    -------
    float
        cf(k) (dimensionless, > 1).

    Raises
    ------
    ValueError
        When ``nsigma`` is not a positive finite number.
    """
    k = float(nsigma)
    if not math.isfinite(k) or k <= 0:
        raise ValueError(f"nsigma must be a positive finite number, got {nsigma!r}")
    c = k * ROBUST_SCALE
    phi = math.exp(-0.5 * c * c) / math.sqrt(2.0 * math.pi)
    return 1.0 / (1.0 - 2.0 * c * phi / math.erf(c / math.sqrt(2.0)))


def _check_threads(threads: int | None) -> int | None:
    if threads is None:
        return None
    if int(threads) != threads or threads < 1:
        raise ValueError(f"threads must be a positive integer or None, got {threads!r}")
    return int(threads)


def stack_cube(
    cube: np.ndarray, nsigma: float, *, threads: int | None = None, limits: bool = False
) -> StackResult:
    """Clipped stack of an in-memory cube.

    Parameters
    ----------
    cube : array_like, shape (N, rows, cols), N >= 1
        The frames; NaN marks a missing value. float32 stays float32 in the sort (exact);
        any other dtype is converted to float64 (a copy).
    nsigma : float
        The clip k (> 0).
    threads : int or None
        numba threads for this call (None: numba's default, all cores).
    limits : bool
        Also return the clip limits (``StackResult.low`` / ``high``).

    Returns
    -------
    StackResult
        AVG (float64), UNC (float32) and CNT (int32), each (rows, cols), in the cube's
        units; the number of values rejected; the limits when asked for.

    Raises
    ------
    ValueError
        When the cube is not (N >= 1, rows, cols), or ``nsigma`` or ``threads`` is invalid.
    """
    arr = np.asarray(cube)
    if arr.ndim != 3 or arr.shape[0] < 1:
        raise ValueError(f"cube must have shape (N >= 1, rows, cols), got {arr.shape}")
    cf = clip_correction(nsigma)
    threads = _check_threads(threads)
    dtype = np.float32 if arr.dtype == np.float32 else np.float64
    buf = np.ascontiguousarray(arr, dtype=dtype)
    _, rows, cols = buf.shape
    avg = np.empty((rows, cols), dtype=np.float64)
    unc = np.empty((rows, cols), dtype=np.float32)
    cnt = np.empty((rows, cols), dtype=np.int32)
    lim = np.empty((2, rows, cols), dtype=np.float64) if limits else None
    nrej = stack_rows(buf, rows, nsigma, cf, avg, unc, cnt, threads=threads, limits=lim)
    result = StackResult(avg, unc, cnt, nrej)
    if lim is not None:
        result.low, result.high = lim[0], lim[1]
    return result


# --------------------------------------------------------------------------------------------
# Streaming from FITS files
# --------------------------------------------------------------------------------------------


class _Input:
    """One input file, opened once, and how to read row bands of its image extension.

    Plain float images are either memory-mapped a band at a time and read in place by the
    kernel (:meth:`map_band`) or read with ``os.preadv`` into the band buffer
    (:meth:`read_into`); integer or scaled images are read with ``os.preadv``
    through a scratch band and converted to float64 as BZERO + BSCALE * stored, with BLANK
    values made NaN (missing). None of these use astropy per band. Tile-compressed images go
    through astropy's ``.section``, with the pages of its memory map released after each
    band. Either way the process's resident memory does not grow with the files read.
    """

    def __init__(self, path: str | Path, extname: str, stack: ExitStack):
        self.path = str(path)
        self.extname = extname
        self._stack = stack
        self._map: mmap.mmap | None = None  # the band mapped by map_band
        self._map_view: np.ndarray | None = None
        self._mapped_once = False
        try:
            handle = open(self.path, "rb")  # noqa: SIM115 (closed by the ExitStack)
        except OSError as exc:
            raise InputError(self.path, f"cannot be opened ({exc.strerror or exc})") from exc
        stack.callback(handle.close)
        self.fd = handle.fileno()
        self.size = os.fstat(self.fd).st_size
        if self.size == 0:
            raise InputError(self.path, "is empty (0 bytes), expected a FITS file")
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", AstropyUserWarning)
            try:
                hdul = fits.open(handle, mode="readonly", memmap=True, lazy_load_hdus=True)
            except (OSError, ValueError, TypeError, IndexError) as exc:
                raise InputError(self.path, f"is not a readable FITS file ({exc})") from exc
            stack.callback(hdul.close)
            self.hdul = hdul
            try:
                index = hdul.index_of(extname)
            except KeyError:
                raise InputError(
                    self.path,
                    f"has no extension {extname} (it has {self._names()}); "
                    f"expected a 2-D image extension named {extname}",
                ) from None
            except (OSError, ValueError, TypeError, IndexError) as exc:
                raise InputError(
                    self.path, f"headers cannot be read looking for {extname} ({exc})"
                ) from exc
            hdu = hdul[index]
        for warning in caught:
            if "truncat" in str(warning.message).lower():
                raise InputError(
                    self.path, f"is truncated: extension {extname} ({warning.message})"
                )
        self.hdu = hdu
        if isinstance(hdu, fits.CompImageHDU):
            self.kind = "compressed"
        elif isinstance(hdu, (fits.ImageHDU, fits.PrimaryHDU)):
            self.kind = "image"
        else:
            raise InputError(
                self.path,
                f"extension {extname} is a {type(hdu).__name__}, expected a 2-D image "
                "(ImageHDU or CompImageHDU)",
            )
        shape = tuple(int(n) for n in hdu.shape)
        if len(shape) != 2 or 0 in shape:
            raise InputError(
                self.path, f"extension {extname} has shape {shape}, expected a 2-D image"
            )
        self.shape = shape
        header = hdu.header
        bitpix = int(header["BITPIX"])
        self.bscale = float(header.get("BSCALE", 1.0))
        self.bzero = float(header.get("BZERO", 0.0))
        blank = header.get("BLANK") if bitpix > 0 else None
        self.blank = int(blank) if isinstance(blank, (int, np.integer)) else None
        scaled = self.bscale != 1.0 or self.bzero != 0.0
        self.offset = int(hdul.fileinfo(index)["datLoc"])
        self.raw = None  # big-endian float dtype of a plain float image: the fast path
        self.ints = None  # big-endian integer dtype of a plain integer image
        if self.kind == "image":
            if bitpix not in FITS_INTS and bitpix not in (-32, -64):
                raise InputError(self.path, f"extension {extname} has BITPIX {bitpix}")
            end = self.offset + shape[0] * shape[1] * abs(bitpix) // 8
            if end > self.size:
                raise InputError(
                    self.path,
                    f"is truncated: extension {extname} data need {end} bytes, "
                    f"the file has {self.size}",
                )
            if bitpix < 0 and not scaled:
                self.raw = np.dtype(">f4" if bitpix == -32 else ">f8")
                self.dtype = self.raw.newbyteorder("=")
            else:  # integers, or scaled floats: physical = BZERO + BSCALE * stored, float64
                self.ints = np.dtype(FITS_INTS.get(bitpix, ">f4" if bitpix == -32 else ">f8"))
                self.dtype = np.dtype(np.float64)
        else:
            try:
                self.dtype = np.dtype(hdu.section.dtype)
            except (AttributeError, KeyError, TypeError, ValueError) as exc:
                raise InputError(
                    self.path, f"extension {extname} data cannot be read ({exc})"
                ) from exc

    def _names(self) -> str:
        try:
            names = [hdu.name for hdu in self.hdul]
        except (OSError, ValueError, TypeError, IndexError):
            return "unreadable headers"
        return ", ".join(names) if names else "none"

    def read_into(self, r0: int, r1: int, dest: np.ndarray, scratch: dict) -> None:
        """Fill ``dest`` (r1 - r0, cols), C-contiguous, with rows [r0, r1) of the image.

        ``dest`` is float32 / float64 (values), or uint32 / uint64 matching the file's float
        size, which receives the file's big-endian bytes as they are (the kernel decodes them).
        """
        if self.raw is not None:
            itemsize = self.raw.itemsize
            if dest.dtype.itemsize == itemsize:
                target = dest  # raw bytes land in place (then swapped unless dest is raw)
            else:  # float32 file into the float64 buffer: read, then widen
                key = RAW_BUFFER[self.raw].str
                if key not in scratch or scratch[key].shape[0] < dest.shape[0]:
                    scratch[key] = np.empty(dest.shape, dtype=RAW_BUFFER[self.raw])
                target = scratch[key][: dest.shape[0]]
            start = self.offset + r0 * dest.shape[1] * itemsize
            got = _pread_into(self.fd, target, start)
            if got != target.nbytes:
                raise InputError(
                    self.path,
                    f"is truncated: extension {self.extname} rows {r0}..{r1 - 1} need "
                    f"{target.nbytes} bytes from offset {start}, got {got}",
                )
            if target is not dest:
                np.copyto(dest, target.view(self.raw))  # big-endian float32 -> float64
            elif dest.dtype.kind == "f":
                dest.view(RAW_BUFFER[self.raw]).byteswap(inplace=True)  # -> native values
            return
        if self.ints is not None:
            key = self.ints.str
            if key not in scratch or scratch[key].shape[0] < dest.shape[0]:
                scratch[key] = np.empty(dest.shape, dtype=self.ints)
            stored = scratch[key][: dest.shape[0]]
            start = self.offset + r0 * dest.shape[1] * self.ints.itemsize
            got = _pread_into(self.fd, stored, start)
            if got != stored.nbytes:
                raise InputError(
                    self.path,
                    f"is truncated: extension {self.extname} rows {r0}..{r1 - 1} need "
                    f"{stored.nbytes} bytes from offset {start}, got {got}",
                )
            np.copyto(dest, stored, casting="unsafe")
            if self.blank is not None:
                dest[stored == self.blank] = np.nan  # BLANK marks missing values
            if self.bscale != 1.0:
                dest *= self.bscale
            if self.bzero != 0.0:
                dest += self.bzero
            return
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", AstropyUserWarning)
                data = self.hdu.section[r0:r1]
            if data.shape != dest.shape:
                raise ValueError(f"got shape {data.shape}, expected {dest.shape}")
            np.copyto(dest, data, casting="unsafe")
        except InputError:
            raise
        except Exception as exc:  # astropy / the decompressor: any failure is unreadable data
            raise InputError(
                self.path,
                f"extension {self.extname} rows {r0}..{r1 - 1} cannot be read ({exc})",
            ) from exc
        finally:
            self._release_pages()

    def _release_pages(self) -> None:
        """Drop the pages astropy's memory map has touched from this process (not the cache).

        Without this, resident memory would grow with every compressed band read, up to the
        size of all inputs. The mapping is read-only for us; dropped pages are re-read from
        the file on the next access.
        """
        mapped = getattr(getattr(self.hdul, "_file", None), "_mmap", None)
        if mapped is not None and hasattr(mapped, "madvise"):
            try:
                mapped.madvise(mmap.MADV_DONTNEED)
            except (OSError, ValueError, AttributeError):
                pass

    # ---- zero-copy access to plain float images (no preprocess) ----------------------------

    @property
    def row_bytes(self) -> int:
        """Bytes per image row in the file (plain float images)."""
        return self.shape[1] * (self.raw.itemsize if self.raw is not None else 0)

    def map_band(self, r0: int, r1: int) -> int:
        """Memory-map rows [r0, r1) read-only, populated; return the address of row r0.

        Only the band's byte range (from the page boundary below it) is mapped: Linux maps
        large page-cache folios whole, but never beyond a mapping, so the band's resident
        pages are the band's (plus at most a page at each end). :meth:`unmap_band` drops it.
        """
        self.unmap_band()
        start = self.offset + r0 * self.row_bytes
        end = self.offset + r1 * self.row_bytes
        base = start - start % mmap.ALLOCATIONGRANULARITY
        try:
            window = mmap.mmap(self.fd, end - base, access=mmap.ACCESS_READ, offset=base)
        except (OSError, ValueError, OverflowError) as exc:
            raise InputError(
                self.path, f"extension {self.extname} rows {r0}..{r1 - 1} cannot be mapped ({exc})"
            ) from exc
        if not self._mapped_once:
            self._stack.callback(self.unmap_band)
            self._mapped_once = True
        self._map = window
        self._map_view = np.frombuffer(window, dtype=np.uint8)
        if hasattr(window, "madvise"):
            try:  # map every page now, in one call, rather than one page fault at a time
                window.madvise(MADV_POPULATE_READ)
            except (OSError, ValueError):
                pass  # kernels before 5.14: page faults do the same, more slowly
        return int(self._map_view.ctypes.data) + (start - base)

    def unmap_band(self) -> None:
        """Unmap the band mapped by :meth:`map_band` (its pages stay in the page cache)."""
        self._map_view = None
        if self._map is not None:
            self._map.close()
            self._map = None


#: madvise(2) option (Linux 5.14): populate the page tables of a range, reading if needed.
MADV_POPULATE_READ = getattr(mmap, "MADV_POPULATE_READ", 22)


def _pread_into(fd: int, target: np.ndarray, offset: int) -> int:
    """Read ``target.nbytes`` bytes at ``offset`` of ``fd`` into ``target``; return the count."""
    view = memoryview(target.reshape(-1).view(np.uint8))
    done = 0
    while done < len(view):
        if hasattr(os, "preadv"):
            n = os.preadv(fd, [view[done:]], offset + done)
        else:  # pragma: no cover - platforms without preadv
            os.lseek(fd, offset + done, os.SEEK_SET)
            n = os.readv(fd, [view[done:]])
        if n <= 0:
            break
        done += n
    return done


def band_height(nframes: int, cols: int, itemsize: int, memory_mb: int, rows: int) -> int:
    """Rows per band so that the (N, band, cols) band buffer fits the memory budget.

    Parameters
    ----------
    nframes : int
        N, the frames stacked.
    cols : int
        Columns of an image (pixels).
    itemsize : int
        Bytes per buffer element (4 or 8).
    memory_mb : int
        Budget of the buffer in MiB (> 0).
    rows : int
        Rows of an image (pixels): the most a band can have.

    Returns
    -------
    int
        Rows per band, 1..``rows`` (at least 1 even when one row exceeds the budget).

    Raises
    ------
    ValueError
        When ``memory_mb`` is not positive.
    """
    if memory_mb <= 0:
        raise ValueError(f"memory_mb must be positive, got {memory_mb}")
    per_row = max(1, nframes * cols * itemsize)
    return int(max(1, min(rows, (memory_mb * 2**20) // per_row)))


def stack_files(
    paths: Sequence[str | Path],
    extname: str,
    nsigma: float,
    *,
    preprocess: Preprocess | None = None,
    memory_mb: int,
    band_rows: int = 0,
    threads: int | None = None,
    mmap_ok: bool = True,
) -> StackResult:
    """Clipped stack of image extension ``extname`` of the FITS files ``paths``, streamed.

    Each file is opened once and all stay open; the image is processed in bands of rows, so
    memory is about ``memory_mb`` (plus the outputs, 16 bytes a pixel) whatever N is.

    Parameters
    ----------
    paths : sequence of paths, N >= 1
        FITS files, in stacking order. Plain (``ImageHDU``/``PrimaryHDU``) and tile-compressed
        (``CompImageHDU``) images are read; all must have the first file's shape.
    extname : str
        The extension to stack (e.g. ``GREEN_CCD``).
    nsigma : float
        The clip k (> 0).
    preprocess : callable ``(i, rows, band) -> ndarray | None``, optional
        Called for frame ``i`` (index into ``paths``) with ``rows`` (a slice of image rows)
        and ``band``, a float64 array (rows in band, cols) the caller may modify in place or
        replace by returning a new array of the same shape. Called band after band; the
        frames of a band may be preprocessed concurrently (see ``threads``), so it must not
        depend on the order of the calls. Without it, float32 inputs are sorted in float32
        (exact).
    band_rows : int
        Rows per band; 0 derives it from ``memory_mb``. Results do not depend on it.
    memory_mb : int
        Budget of the band buffer in MiB when ``band_rows`` is 0.
    threads : int or None
        numba threads for the kernel, and threads gathering a band's frames into the
        buffer (None: all cores). Results do not depend on it.
    mmap_ok : bool
        Allow the zero-copy path (below); False always copies into the band buffer.

    Returns
    -------
    StackResult
        AVG (float64), UNC (float32) and CNT (int32), each (rows, cols) of the inputs'
        image, in the units of the (preprocessed) inputs, and the number of values rejected.

    Reading: without ``preprocess``, plain float32/float64 files are memory-mapped a band at
    a time and the kernel reads their big-endian bytes where the page cache holds them (no
    copy; the band's mappings, ``memory_mb`` in all, are dropped after it; a file truncated
    *while* it is being read would kill the process with SIGBUS, as with any memory map).
    With ``mmap_ok=False`` the bytes are read (``preadv``) into a band buffer instead, still
    decoded by the kernel. Other inputs (a ``preprocess``, integer, scaled or tile-compressed
    images) are read into a float64 band buffer (float32 when all are float32 and nothing is
    applied).

    Raises
    ------
    InputError
        Naming the file and the extension: unreadable or not FITS, extension missing, not a
        2-D image, shape differing from the first file's, data truncated or undecodable.
    """
    paths = [str(p) for p in paths]
    if not paths:
        raise ValueError("no input files")
    if band_rows < 0:
        raise ValueError(f"band_rows must be >= 0, got {band_rows}")
    cf = clip_correction(nsigma)
    threads = _check_threads(threads)
    with ExitStack() as stack:
        inputs = [_Input(path, extname, stack) for path in paths]
        first = inputs[0]
        for inp in inputs[1:]:
            if inp.shape != first.shape:
                raise InputError(
                    inp.path,
                    f"extension {extname} has shape {inp.shape}, expected {first.shape} "
                    f"like the first file {first.path}",
                )
        rows, cols = first.shape
        nframes = len(inputs)
        avg = np.empty((rows, cols), dtype=np.float64)
        unc = np.empty((rows, cols), dtype=np.float32)
        cnt = np.empty((rows, cols), dtype=np.int32)
        raws = {inp.raw for inp in inputs}
        plain = preprocess is None and len(raws) == 1 and None not in raws
        if plain and mmap_ok:
            # Plain float files, nothing to apply: the kernel reads the file bytes where the
            # page cache holds them (a memory map per file and band), no copy, no buffer.
            dtype = RAW_BUFFER[raws.pop()]
            band = band_rows or band_height(nframes, cols, dtype.itemsize, memory_mb, rows)
            band = min(band, rows)
            log.debug("stacking %s of %d files in place, bands of %d rows", extname, nframes, band)
            nrej = 0
            for r0 in range(0, rows, band):
                r1 = min(rows, r0 + band)
                frames = np.array([inp.map_band(r0, r1) for inp in inputs], dtype=np.int64)
                nrej += stack_frames(
                    frames,
                    first.row_bytes,
                    dtype,
                    r1 - r0,
                    cols,
                    nsigma,
                    cf,
                    avg[r0:r1],
                    unc[r0:r1],
                    cnt[r0:r1],
                    threads=threads,
                )
                for inp in inputs:
                    inp.unmap_band()
            return StackResult(avg, unc, cnt, nrej)
        if plain:  # mapping not allowed: read the file bytes into the buffer, undecoded
            dtype = RAW_BUFFER[raws.pop()]
        elif preprocess is None and all(inp.dtype == np.float32 for inp in inputs):
            dtype = np.dtype(np.float32)
        else:
            dtype = np.dtype(np.float64)
        if band_rows:
            band = min(int(band_rows), rows)
        else:
            band = band_height(nframes, cols, dtype.itemsize, memory_mb, rows)
        buf = np.empty((nframes, band, cols), dtype=dtype)
        log.debug(
            "stacking %s of %d file(s): %d x %d in bands of %d rows, %s buffer of %.0f MiB",
            extname,
            nframes,
            rows,
            cols,
            band,
            dtype.name,
            buf.nbytes / 2**20,
        )
        local = threading.local()  # per-thread scratch buffers of read_into

        def gather(i: int, r0: int, r1: int) -> None:
            """Frame ``i``'s rows [r0, r1) into the band buffer, preprocessed."""
            if not hasattr(local, "scratch"):
                local.scratch = {}
            dest = buf[i, : r1 - r0]
            inputs[i].read_into(r0, r1, dest, local.scratch)
            if preprocess is not None:
                out = preprocess(i, slice(r0, r1), dest)
                if out is not None and out is not dest:
                    out = np.asarray(out)
                    if out.shape != dest.shape:
                        raise ValueError(
                            f"preprocess returned shape {out.shape} for frame {i} rows "
                            f"{r0}..{r1 - 1}, expected {dest.shape}"
                        )
                    np.copyto(dest, out, casting="unsafe")

        # Plain files are read (preadv) and preprocessed (NumPy) with the GIL released, so the
        # frames of a band are gathered by several threads; compressed ones go through
        # astropy, one at a time.
        workers = gather_workers(threads, nframes, inputs)
        nrej = 0
        with ThreadPoolExecutor(max_workers=workers) as pool:
            for r0 in range(0, rows, band):
                r1 = min(rows, r0 + band)
                if workers > 1:
                    list(pool.map(gather, range(nframes), [r0] * nframes, [r1] * nframes))
                else:
                    for i in range(nframes):
                        gather(i, r0, r1)
                nrej += stack_rows(
                    buf, r1 - r0, nsigma, cf, avg[r0:r1], unc[r0:r1], cnt[r0:r1], threads=threads
                )
    return StackResult(avg, unc, cnt, nrej)


def gather_workers(threads: int | None, nframes: int, inputs: list[_Input]) -> int:
    """Threads that gather the frames of a band into the buffer.

    Parameters
    ----------
    threads : int or None
        Threads asked for (None: the cores this process may use).
    nframes : int
        Frames in a band: at most one thread each.
    inputs : list of _Input
        The opened inputs; any tile-compressed one forces a single thread (astropy's reader
        is not shared safely).

    Returns
    -------
    int
        The number of threads, >= 1.
    """
    if any(inp.kind != "image" for inp in inputs):
        return 1
    if threads is None:
        cores = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else None
        threads = len(cores) if cores else (os.cpu_count() or 1)
    return max(1, min(threads, nframes))
