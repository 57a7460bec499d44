"""Files of a run: user errors, safe reads of arrays, checkpoints and RNG state.

Checkpoints are plain dicts that torch.load(weights_only=True) reads; the authors' checkpoints load too
(`convert_state_dict`).  Writing goes through folders.py (output folders and the record of what this
project wrote there).
"""
import errno
import hashlib
import io
import math
import os
import pickle
import random
import stat
import sys
import warnings
import zipfile
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

from .copies import COPIES, drawing_size, near_copies
from .startup import end_quiet_ctrl_c, ignore_ctrl_c_from_now


class UserError(Exception):
    """Bad input (data, flags, files) that the user must fix: one line on stderr, exit code 2."""
    exit_code = 2


class Interrupted(UserError):
    """Ctrl-C (SIGINT): one line on stderr saying where the run stands, exit code 130 (128 + SIGINT)."""
    exit_code = 130


@contextmanager
def exit_on_user_error(prog):
    """Turn a UserError raised inside the block into one line `prog: error: ...` (a message quoting a
    multi-line text, a file name with a newline say, is joined) and its exit code; a Ctrl-C that nothing
    inside turned into Interrupted becomes `prog: error: interrupted` and exit code 130 (before the block,
    startup.quiet_ctrl_c says the same).  What the system refuses on a path the user gave (an OSError that
    names its file: a name too long, no permission) and running out of memory are one line and exit code 2
    too.  In a command, a Ctrl-C after the block is ignored (startup.ignore_ctrl_c_from_now): the command's
    work is over."""
    end_quiet_ctrl_c()
    try:
        yield
    except UserError as e:
        print(f"{prog}: error: {' '.join(str(e).splitlines())}", file=sys.stderr)
        sys.exit(e.exit_code)
    except OSError as e:
        if e.filename is None:
            raise
        print(f"{prog}: error: {' '.join(str(e.filename).splitlines())}: {e.strerror}", file=sys.stderr)
        sys.exit(UserError.exit_code)
    except (MemoryError, RuntimeError) as e:
        if not out_of_memory(e):
            raise
        print(f"{prog}: error: out of memory ({str(e).splitlines()[0] if str(e) else 'MemoryError'}): the sizes "
              "given need more memory than this machine has (in a run: the batch, sample or MC sample sizes); files "
              "already written are kept (a run continues with --resume)", file=sys.stderr)
        sys.exit(UserError.exit_code)
    except KeyboardInterrupt:
        print(f"{prog}: error: interrupted", file=sys.stderr)
        sys.exit(Interrupted.exit_code)
    finally:
        ignore_ctrl_c_from_now()


def out_of_memory(error):
    """Whether `error` says that memory ran out: Python's MemoryError, torch's on CPU ("can't allocate
    memory") or on a GPU (torch.OutOfMemoryError)."""
    return isinstance(error, (MemoryError, torch.OutOfMemoryError)) or "can't allocate memory" in str(error)


# ---- safe reads

DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


def physical_memory():
    """Bytes of memory of this machine, or None where the system does not tell (non-POSIX)."""
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):
        return None


def format_bytes(size):
    """1536 -> '1.5 KiB'."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024:
            return f"{size:.3g} {unit}"
        size /= 1024
    return f"{size:.3g} PiB"


def check_fits_in_memory(size, what):
    """Refuse `what` (a phrase naming the flag or file) when its `size` bytes exceed this machine's memory."""
    memory = physical_memory()
    if memory is not None and size > memory:
        raise UserError(f"{what} would take {format_bytes(size)}, more than the {format_bytes(memory)} of "
                        "memory of this machine")


def special_file_kind(path):
    """What `path` is, in words, when reading it as a file would fail or never end: "a broken symbolic link",
    "a symbolic link loop", "a FIFO (named pipe)", "a device", "a socket"; None for a regular file, a folder,
    a path that does not exist (the caller names that) or one this process may not inspect."""
    path = Path(path)
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        return "a broken symbolic link" if path.is_symlink() else None
    except OSError as e:
        return "a symbolic link loop" if e.errno == errno.ELOOP else None
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe)"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    return "a socket" if stat.S_ISSOCK(mode) else None


class Unreadable(UserError):
    """A file that is there but that this user may not read: its content is not in question."""


def check_readable(path, what=""):
    """Raise Unreadable for a file `path` (named after `what`) that this process may not open for reading."""
    try:
        with open(path, "rb"):
            pass
    except PermissionError as e:
        raise Unreadable(f"cannot read {what}{path} ({e.strerror}): give this user read access; the file is "
                         "left as it is") from None


def check_regular_file(path, what=""):
    """Refuse `path` (named after `what`, a flag such as "--source ") when it is a broken link, a link loop, a
    FIFO, a device or a socket: reading a device such as /dev/zero never ends, and a FIFO blocks."""
    kind = special_file_kind(path)
    if kind is not None:
        raise UserError(f"{what}{path} is {kind}, not a regular file")


_NPY_HEADER_READERS = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}


def load_npy(path, mmap_mode=None):
    """np.load of a numeric .npy array (no pickled objects).  The header is checked first: a file that is not
    a regular file (a FIFO, a device) or not a .npy array, holds Python objects, is shorter than its header
    says, or (unless memory-mapped) promises more than this machine's memory raises UserError naming it."""
    path = Path(path)
    expected = "expected a numeric .npy array written by numpy.save"
    check_regular_file(path)
    try:
        with open(path, "rb") as f:
            read_header = _NPY_HEADER_READERS.get(np.lib.format.read_magic(f))
            if read_header is None:
                raise UserError(f"{path}: unsupported .npy format version; {expected}")
            shape, _, dtype = read_header(f)
            data_offset = f.tell()
    except (ValueError, EOFError) as e:
        raise UserError(f"{path} is not a .npy array ({e}); {expected}") from None
    except OSError as e:
        raise UserError(f"{path}: cannot read ({e.strerror or e})") from None
    if dtype.hasobject:
        raise UserError(f"{path} holds Python objects (pickled data); {expected}")
    size = math.prod(shape) * dtype.itemsize
    if mmap_mode is None:
        check_fits_in_memory(size, f"{path} (a {dtype} array of shape {shape})")
    if path.stat().st_size < data_offset + size:
        raise UserError(f"{path} is truncated: its header promises a {dtype} array of shape {shape} "
                        f"({format_bytes(size)}) but the file holds {format_bytes(path.stat().st_size)}")
    try:
        return np.load(path, mmap_mode=mmap_mode, allow_pickle=False)
    except MemoryError:
        raise UserError(f"{path}: its {format_bytes(size)} array does not fit in the free memory") from None
    except (ValueError, OSError, EOFError) as e:
        raise UserError(f"{path} is not a readable .npy array ({e}); {expected}") from None


SAME_CLASS_TOLERANCE = 1e-4  # items this close (max abs, a fraction of the data's largest value) are equal
SCREEN_DIRECTIONS = 16  # random projections of the class means that screen the pairs of classes compared
ITEM_CHUNK = 32


def check_distinct_classes(splits, data_dir):
    """Refuse splits ({file name: (C, I, ...) array or CPU tensor of C classes}) in which one class appears
    twice: the same items in any order, each within SAME_CLASS_TOLERANCE of the largest absolute value of
    the two classes (one file copied, shuffled or re-saved under another name).  A test or validation split
    holding training classes measures nothing it promises, and two equal classes of an episode cannot be
    told apart.  data_dir names where the splits are.  Then check_classes_hold_their_own_items (partial
    copies, items repeated within a class).

    Equal classes have class means within the tolerance in every value, so their projections on a few
    random directions r are within tolerance * |r|_1: only the pairs that pass this screen (found by
    sorting on the first projection) are compared item by item."""
    names = [(name, index) for name, classes in splits.items() for index in range(len(classes))]
    classes = [np.asarray(c).reshape(len(c), c.shape[1], -1) for c in splits.values()]  # (C, I, P) views
    items = [class_items for c in classes for class_items in c]
    if len(items) < 2:
        return
    scales = np.concatenate([np.abs(c).max(axis=(1, 2)) for c in classes]).astype(np.float64)  # (C total,)
    tolerance = SAME_CLASS_TOLERANCE * scales.max()  # the sort's window, for every pair at once
    means = np.concatenate([c.mean(1, dtype=np.float64) for c in classes])  # (C total, P)
    directions = np.random.default_rng(0).standard_normal((means.shape[1], SCREEN_DIRECTIONS))
    projections, spans = means @ directions, np.abs(directions).sum(0)  # (C total, R), (R,)
    limits = tolerance * spans
    order = np.argsort(projections[:, 0], kind="stable")
    ends = np.searchsorted(projections[order, 0], projections[order, 0] + limits[0], side="right")
    counts = ends - np.arange(len(order)) - 1  # the classes after each one in `order` within the first limit
    left = np.repeat(np.arange(len(order)), counts)
    right = left + 1 + np.arange(len(left)) - np.repeat(np.cumsum(counts) - counts, counts)
    pairs = np.sort(np.stack([order[left], order[right]], 1), 1)  # (first, second) in the order of `names`
    pair_scales = np.maximum(scales[pairs[:, 0]], scales[pairs[:, 1]])  # one outlier widens no other pair
    limits_of_pairs = SAME_CLASS_TOLERANCE * pair_scales[:, None] * spans  # (pairs, R)
    within = np.abs(projections[pairs[:, 0]] - projections[pairs[:, 1]]) <= limits_of_pairs
    pairs = pairs[within.all(1)]
    for first, second in pairs[np.lexsort((pairs[:, 1], pairs[:, 0]))]:
        if _same_items(items[first], items[second], SAME_CLASS_TOLERANCE * max(scales[first], scales[second])):
            (name, index), (other, other_index) = names[second], names[first]
            raise UserError(f"{data_dir}: class {index} of {name} is class {other_index} of {other} (the same "
                            f"{len(items[first])} items, in any order, up to {SAME_CLASS_TOLERANCE:g} of the "
                            "largest value); every class must be a different one")
    check_classes_hold_their_own_items(splits, data_dir)


def check_classes_hold_their_own_items(splits, data_dir):
    """Refuse a class (in splits, as check_distinct_classes) of which half the items or more are copies:
    of each other (one drawing repeated: its queries are scored against copies of its support items), or
    of items of one other class (part of another split's class: test accuracy on classes already seen).
    Copies are equal items or near-copies (copies.near_copies: noise added, rescaled, drawings moved or
    resized); a few shared items, as real datasets hold, are allowed."""
    names = [(name, index) for name, classes in splits.items() for index in range(len(classes))]
    sizes = np.array([c.shape[1] for c in splits.values() for _ in range(len(c))])  # items per class
    rows = np.concatenate([np.ascontiguousarray(c, dtype=np.float32).reshape(len(c) * c.shape[1], -1)
                           for c in splits.values()])  # (all items, P), class after class
    ids, near = near_copies(rows, drawing_size(next(iter(splits.values())).shape[2:]))
    held = np.unique(np.stack([np.repeat(np.arange(len(names)), sizes), ids], 1), axis=0)  # (class, item id)
    within = _class_links(held, near[:, ::-1])  # (class, id, class): a copy of an item with a smaller id
    copied = np.unique(within[within[:, 0] == within[:, 2], :2], axis=0)[:, 0]
    distinct = np.bincount(held[:, 0], minlength=len(names)) - np.bincount(copied, minlength=len(names))
    repeated = np.flatnonzero(2 * distinct <= sizes)
    if len(repeated):
        name, index = names[repeated[0]]
        raise UserError(f"{data_dir}: class {index} of {name} holds {distinct[repeated[0]]} different items among "
                        f"its {sizes[repeated[0]]}: the others are copies ({COPIES}), and a query would be scored "
                        "against a copy of its support item")
    shared_ids = np.flatnonzero(np.bincount(held[:, 1]) > 1)  # items that several classes hold
    links = _class_links(held, np.concatenate([np.stack([shared_ids, shared_ids], 1), near, near[:, ::-1]]))
    links = np.unique(links[links[:, 0] != links[:, 2]], axis=0)  # (class, id, other class), each once
    if len(links):
        pairs, counts = np.unique(links[:, [0, 2]], axis=0, return_counts=True)  # items of a class in another
        mostly = np.flatnonzero(2 * counts > distinct[pairs[:, 0]])
        if len(mostly):
            pick = mostly[np.argmax(pairs[mostly, 0])]  # the later class holds the earlier one's items
            (first, second), count = pairs[pick], counts[pick]
            (name, index), (other, other_index) = names[first], names[second]
            raise UserError(f"{data_dir}: {count} of the {distinct[first]} items of class {index} of {name} are "
                            f"items of class {other_index} of {other} or copies of them ({COPIES}); every class "
                            "must be a different one")


def _class_links(held, links):
    """(class, id, other class) for each link (id, other id) of item ids (k, 2), each class that holds the
    id and each other class that holds the other id.  held: (class, id) pairs (h, 2)."""
    by_id = held[np.argsort(held[:, 1], kind="stable")]
    for side in (0, 1):  # expand each link over the classes holding its first id, then its second
        start = np.searchsorted(by_id[:, 1], links[:, side])
        count = np.searchsorted(by_id[:, 1], links[:, side], side="right") - start
        link = np.repeat(np.arange(len(links)), count)
        holder = by_id[start[link] + np.arange(len(link)) - np.repeat(np.cumsum(count) - count, count), 0]
        links = np.concatenate([links[link], holder[:, None]], 1)
    return links[:, [2, 0, 3]]


def _same_items(a, b, tolerance):
    """Whether items a and b (I, P) are the same up to order: each item of one is within `tolerance` (max
    abs) of an item of the other."""
    if a.shape != b.shape:
        return False
    close = np.concatenate([(np.abs(chunk[:, None] - b[None]) <= tolerance).all(-1)
                            for chunk in np.array_split(a, -(-len(a) // ITEM_CHUNK))])  # (I, I)
    return bool(close.any(1).all() and close.any(0).all())


FLOAT32_MAX = float(np.finfo(np.float32).max)


def metric_number(text):
    """A metrics.csv cell as a float.  Raises ValueError unless it is finite and within float32's range: runs
    compute their losses and accuracies in float32 and stop on a NaN or Inf loss, so no run writes another."""
    value = float(text)
    if not abs(value) <= FLOAT32_MAX:
        raise ValueError(f"{text!r} is not a finite float32 number")
    return value


# ---- checkpoints

# The authors' checkpoints store their accuracy as a numpy scalar; allow exactly those types.
_NUMPY_SCALAR_TYPES = [np.dtype, type(np.dtype(np.float64)), type(np.dtype(np.float32))]
try:
    _NUMPY_SCALAR_TYPES.append(np._core.multiarray.scalar)
except AttributeError:  # numpy < 2
    _NUMPY_SCALAR_TYPES.append(np.core.multiarray.scalar)


def checkpoint_bytes(state):
    """The bytes torch.save writes for `state`, for an OutputFolder to write (folders.py): written by Python,
    a full disk is an OSError that names the file (torch's own writer says less)."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.getbuffer()


CHECKPOINT_EXPECTED = "expected a .pt checkpoint of this project or the authors' .pth"


def load_checkpoint(path, data=None):
    """Load a checkpoint dict onto the CPU without unpickling arbitrary objects.

    Whatever torch.load raises, the file is not a checkpoint: every failure becomes a UserError that names
    the file and what it should be (torch's own advice to load with weights_only=False is not passed on).
    data: the file's bytes, already read (a run's own checkpoint, read through its folder); `path` then
    only names it.
    """
    path = Path(path)
    if data is None:
        if path.is_dir():
            raise UserError(f"checkpoint {path} is a directory; {CHECKPOINT_EXPECTED}")
        check_regular_file(path, "checkpoint ")  # a FIFO, device, socket, broken link or link loop
        if not path.exists():
            raise UserError(f"checkpoint {path} does not exist")
        check_readable(path, "checkpoint ")
    try:
        with torch.serialization.safe_globals(_NUMPY_SCALAR_TYPES), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch warns about pickle protocols of files it then reads or refuses
            state = torch.load(path if data is None else io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as e:  # whatever it is, the file is not a checkpoint
        failure = _load_failure(path, e) if data is None else "a damaged torch archive"
        raise UserError(f"{path} is not a readable checkpoint ({failure}); {CHECKPOINT_EXPECTED}") from None
    if not isinstance(state, dict):
        raise UserError(f"{path} is not a checkpoint: expected a dict, found {type(state).__name__}")
    return state


def _load_failure(path, error):
    """Why torch.load failed on `path`, in the user's terms."""
    try:
        if path.stat().st_size == 0:
            return "an empty file"
        if not zipfile.is_zipfile(path):
            return "not a file written by torch.save, or a truncated one"
    except OSError as e:
        return f"cannot read it: {e.strerror or e}"
    if isinstance(error, pickle.UnpicklingError):
        return "it holds Python objects besides tensors, numbers and containers"
    if isinstance(error, MemoryError):
        return "its tensors do not fit in memory"
    return "a damaged torch archive"


REFERENCE_BUFFERS = ("log_norm_constant", "uniform_pi")  # constants of the authors' models we compute instead


def convert_state_dict(state_dict, prefixes):
    """Rename an authors' state_dict by module prefix ({their prefix: ours}) and drop their buffers.

    An unknown name raises UserError.
    """
    converted = {}
    for name, tensor in state_dict.items():
        if name in REFERENCE_BUFFERS:
            continue
        prefix = next((p for p in prefixes if name.startswith(p)), None)
        if prefix is None:
            raise UserError(f"unexpected parameter {name!r}")
        converted[prefixes[prefix] + name[len(prefix):]] = tensor
    return converted


# What a checkpoint holds, for messages: our checkpoints by their model_config's keys, the authors' by the
# first module of their state_dict names (their Omniglot model also has the set posterior of the other).
_MODEL_CONFIG_KINDS = {frozenset({"hidden_size", "latent_size", "num_heads"}): "Omniglot",
                       frozenset({"feature_size", "latent_size", "num_heads"}): "Mini-ImageNet",
                       frozenset({"hidden_size", "image_size"}): "SimCLR"}
OURS, AUTHORS = "this project's", "the authors'"
_REFERENCE_KINDS = (("encoder.encoder.", "Omniglot"), ("q_z_given_x_net.", "Mini-ImageNet"))
MAX_NAMES_SHOWN = 6


def checkpoint_kind(state):
    """(whose: OURS or AUTHORS, model name such as "Omniglot") of a loaded checkpoint dict, or None."""
    if isinstance(state.get("model_config"), dict):
        kind = _MODEL_CONFIG_KINDS.get(frozenset(state["model_config"]))
        return None if kind is None else (OURS, kind)
    if isinstance(state.get("state_dict"), dict):
        names = [n for n in state["state_dict"] if isinstance(n, str)]
        return next(((AUTHORS, kind) for prefix, kind in _REFERENCE_KINDS
                     if any(n.startswith(prefix) for n in names)), None)
    return None


def shortened(text, limit=40):
    """`text` cut to `limit` characters, "..." marking a cut: a value from a file, quoted in a message."""
    return text if len(text) <= limit else text[:limit - 3] + "..."


def name_list(names):
    names = sorted(names)
    shown = ", ".join(names[:MAX_NAMES_SHOWN])
    return shown + (f" and {len(names) - MAX_NAMES_SHOWN} more" if len(names) > MAX_NAMES_SHOWN else "")


class NonFiniteCheckpoint(UserError):
    """A checkpoint whose weights or optimizer state hold NaN or Inf."""


def _check_tensor_dict(state_dict, path, key):
    """Refuse `state_dict` (the checkpoint's entry `key`) unless it is a dict of named tensors, all finite."""
    if not isinstance(state_dict, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                                   for k, v in state_dict.items()):
        found = type(state_dict).__name__ if not isinstance(state_dict, dict) else "a dict holding other things"
        raise UserError(f"{path}: {key!r} is not a dict of named tensors (found {found})")
    _check_usable(state_dict, path, key)


NON_FINITE = "holds NaN or Inf values"


def _tensor_kind_problem(tensor):
    """Why `tensor` is not a plain tensor of numbers as torch.save writes weights (dense, with its values,
    real), or None."""
    if tensor.layout != torch.strided:
        return f"is a {str(tensor.layout).removeprefix('torch.')} tensor"
    if tensor.is_meta:
        return "is a meta tensor (a shape without values)"
    if tensor.is_complex() or tensor.is_quantized:
        return f"holds {str(tensor.dtype).removeprefix('torch.')} values"
    return None


def _unusable(value, name):
    """(name '<name>/<key>/...', problem) of the first tensor or float in `value`, a tensor, float or nested
    dict, list or tuple of them, that is not a plain tensor (_tensor_kind_problem) or holds NaN or Inf;
    None if there is none."""
    if isinstance(value, torch.Tensor):
        problem = _tensor_kind_problem(value)
        if problem is None and value.is_floating_point() and not bool(torch.isfinite(value).all()):
            problem = NON_FINITE
        return None if problem is None else (name, problem)
    if isinstance(value, float):
        return None if math.isfinite(value) else (name, NON_FINITE)
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, (list, tuple)) else ()
    return next((found for k, v in items if (found := _unusable(v, f"{name}/{k}")) is not None), None)


def _check_usable(value, path, key):
    """Refuse a checkpoint whose entry `key` (value: see _unusable) holds NaN or Inf, or a tensor that is not
    plain numbers, naming the first: a model or optimizer with them gives meaningless numbers (chance-level
    accuracies, nan probabilities, one cluster) or fails inside torch."""
    found = _unusable(value, key)
    if found is not None:
        name, problem = found
        if problem is NON_FINITE:
            raise NonFiniteCheckpoint(f"{path}: tensor {name!r} {problem}; the weights are not usable (a diverged "
                                      "or damaged checkpoint)")
        raise UserError(f"{path}: tensor {name!r} {problem}; expected dense tensors of real numbers, as torch.save "
                        "writes a model's weights")


class NonFiniteResult(UserError):
    """The model's output holds NaN or Inf although its weights are finite."""


def check_finite_result(values, what):
    """Refuse `values` (a tensor: the model's `what`) unless all are finite.  Finite weights can still give
    NaN or Inf (a BatchNorm variance below 0, weights or inputs so large that they overflow), and an
    accuracy, a cluster or a figure computed from them would mean nothing."""
    if not bool(torch.isfinite(values).all()):
        raise NonFiniteResult(f"the model's {what} hold NaN or Inf values: its weights give no usable result on "
                              "these inputs (a damaged checkpoint, one trained into a degenerate state, or inputs "
                              "far outside the range it was trained on)")


def load_weights(model, state_dict, path, name, renamed=False):
    """model.load_state_dict(state_dict) (a dict of named tensors), a mismatch raising UserError that names
    the missing, unexpected and differently shaped tensors (by our names: renamed says the state_dict is an
    authors' one converted by convert_state_dict)."""
    expected = model.state_dict()
    missing, unexpected = expected.keys() - state_dict.keys(), state_dict.keys() - expected.keys()
    reshaped = [k for k in expected.keys() & state_dict.keys() if expected[k].shape != state_dict[k].shape]
    problems = [f"{what}: {name_list(keys)}" for what, keys in
                (("missing", missing), ("unexpected", unexpected), ("other shapes", reshaped)) if keys]
    if problems:
        names = " in this project's names" if renamed else ""
        raise UserError(f"{path}: weights do not fit the {name} model ({'; '.join(problems)}{names})")
    try:
        model.load_state_dict(state_dict)
    except RuntimeError as e:
        raise UserError(f"{path}: weights do not fit the {name} model ({str(e).strip().splitlines()[0]})") from None


def new_model(model_class, config, settings, name):
    """model_class(**config), the settings named by `settings` (a checkpoint's model_config, or flags): a size
    that is true or false (Python would take it as 1 or 0) or below 1 (torch builds empty layers from 0, with a
    warning), or any error while building it (more memory than there is), is the settings', and raises
    UserError naming them and the model (`name`)."""
    booleans = [f"{key} {value}" for key, value in config.items() if isinstance(value, bool)]
    if booleans:
        raise UserError(f"{settings}: the {name} model needs whole numbers as sizes, not {', '.join(booleans)}")
    not_positive = [f"{key} {value}" for key, value in config.items() if isinstance(value, int) and value < 1]
    if not_positive:
        raise UserError(f"{settings}: the {name} model needs sizes of at least 1 ({', '.join(not_positive)})")
    try:
        return model_class(**config)
    except Exception as e:  # the settings come from the user: any failure is theirs
        raise UserError(f"{settings}: the {name} model cannot be built with these settings "
                        f"({str(e).strip().splitlines()[0]})") from None


def build_model(state, path, model_class, name, convert_reference=None):
    """A model from a loaded checkpoint dict: ours (keys "model", "model_config") or, given convert_reference,
    the authors' (a dict whose "state_dict" uses their names, converted by convert_reference -> (state_dict,
    config)).  A file of another kind, or whose weights do not fit, raises UserError."""
    expected = f"expected a checkpoint of the {name} model" + (" (ours or the authors' .pth)" if convert_reference
                                                               else "")
    kind = checkpoint_kind(state)
    if kind is not None and kind[1] != name:
        raise UserError(f"{path} holds {kind[0]} {kind[1]} model; {expected}")
    if "model" in state:
        if "model_config" not in state:
            raise UserError(f"{path}: no 'model_config' beside 'model'; {expected}")
        state_dict, config = state["model"], state["model_config"]
        _check_tensor_dict(state_dict, path, "model")
    elif "state_dict" in state and convert_reference is not None:
        _check_tensor_dict(state["state_dict"], path, "state_dict")
        try:
            state_dict, config = convert_reference(state["state_dict"])
        except UserError as e:
            raise UserError(f"{path}: not the authors' {name} model ({e})") from None
        except KeyError as e:
            raise UserError(f"{path}: not the authors' {name} model (no tensor {e.args[0]!r})") from None
        except IndexError:
            raise UserError(f"{path}: not the authors' {name} model (tensors of other shapes)") from None
    else:
        raise UserError(f"{path}: neither a 'model' nor a 'state_dict' key; {expected}")
    if not isinstance(config, dict) or not all(isinstance(k, str) for k in config):
        raise UserError(f"{path}: 'model_config' is not a dict of settings; {expected}")
    model = new_model(model_class, config, f"{path}: model_config {config}", name)
    load_weights(model, state_dict, path, name, renamed="model" not in state)
    return model


# ---- RNG state

def seed_everything(seed):
    """Seed python, numpy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def rng_state():
    """All global RNG states, as objects torch.load(weights_only=True) accepts."""
    np_state = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": (np_state[0], torch.from_numpy(np_state[1].copy()), *np_state[2:]),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def set_rng_state(state):
    random.setstate(state["python"])
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, keys.numpy(), *rest))
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def check_writable_folder(path, flag):
    """Refuse `path`, the value of `flag`, unless it is a folder this process may write in or may create."""
    path = Path(path)
    existing = next(p for p in (path, *path.absolute().parents) if p.exists())
    if not existing.is_dir():
        raise UserError(f"cannot write to {flag} {path}: {existing} is not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UserError(f"cannot write to {flag} {path}: {existing} is not writable")


def check_run_checkpoint(state, path, keys, name):
    """Refuse to resume from `path` unless it is the last.pt of a run of the `name` model (a dict with `keys`)."""
    kind = checkpoint_kind(state)
    expected = f"--resume expects a last.pt written by training the {name} model"
    if kind is not None and kind != (OURS, name):
        raise UserError(f"{path} holds {kind[0]} {kind[1]} model; {expected}")
    missing = [k for k in keys if k not in state]
    if missing:
        raise UserError(f"{path}: not a run checkpoint (no {', '.join(map(repr, missing))}); {expected}")
    _check_tensor_dict(state["model"], path, "model")
    _check_usable(state["optimizer"], path, "optimizer")


def check_same_flags(saved_config, config, flags):
    """Refuse to resume a run whose saved config differs from `config` (a dict of flags) in any of `flags`."""
    differing = [f for f in flags if saved_config.get(f) != config[f]]
    if differing:
        raise UserError("--resume with different settings than the saved run: " + ", ".join(
            f"--{f.replace('_', '-')} {config[f]} (saved {saved_config.get(f)})" for f in differing))


DATA_DIGEST = "data_sha256"  # the config entry, beside the flags, that names a run's data
SPLIT_DIGESTS = "split_sha256"  # the config entry {split: sha256}: which data each split was
DATA_FOLDER = "data_path"  # the config entry: the absolute path of --data-dir when the run started


def data_sha256(splits):
    """Hex sha256 of a run's data: each split's name, dtype, shape and values, in name order.
    splits: {name: CPU tensor or numpy array}, e.g. {"train": (C, I, 1, 28, 28), ...}."""
    return data_and_split_sha256(splits)[0]


def data_and_split_sha256(splits):
    """(data_sha256(splits), {name: data_sha256({name: split})}) from one pass over the values."""
    digest, per_split = hashlib.sha256(), {}
    for name in sorted(splits):
        split = splits[name]
        values = np.ascontiguousarray(split) if isinstance(split, np.ndarray) else split.contiguous().numpy()
        header, data = f"{name} {values.dtype} {values.shape}\n".encode(), values.reshape(-1).view(np.uint8)
        own = hashlib.sha256()
        for each in (digest, own):
            each.update(header)
            each.update(data)
        per_split[name] = own.hexdigest()
    return digest.hexdigest(), per_split


def check_same_data(saved_config, config, path):
    """Refuse to resume the run of checkpoint `path` on other data than it trained on: the DATA_DIGEST of
    `config` against the saved one (a run from before digests has none, and is not checked)."""
    saved = saved_config.get(DATA_DIGEST)
    if saved is not None and saved != config[DATA_DIGEST]:
        raise UserError(f"--resume: --data-dir {config['data_dir']} holds other data than the run of {path} trained "
                        f"on (sha256 {config[DATA_DIGEST][:12]}..., the run's {str(saved)[:12]}...): give the run's "
                        "own data (a moved or copied folder of the same files is accepted), or start anew with "
                        "--overwrite or another --save-dir")
