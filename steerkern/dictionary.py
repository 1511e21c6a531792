"""Concept dictionaries: the rows steerkern steers with and detects, with their concepts' metadata.

A ``ConceptDictionary`` holds rows ``weight [N, d]`` (steering directions, and detection directions
for ReFT-r1), an optional detection ``bias [N]``, an optional SAE encoder (``encoder [d, N]``,
``b_enc [N]``, JumpReLU ``threshold [N]``, ``b_dec [d]``), ``max_act [N]`` (AxBench scales a
steering factor by it; 1.0 where unknown), optional detection ``thresholds [N]`` (NaN where
unknown), one metadata record per row and the provenance of the file it came from. Every value is finite
(``thresholds`` aside, where NaN means unknown): NaN or Inf is refused, naming the first bad row.

``ConceptDictionary.load`` reads, recognising the format by the file:

- **steerkern** ``.safetensors`` (also written by ``save``): the tensors plus JSON metadata in the
  header (concepts, provenance, format version). The file is memory-mapped, not copied: opening
  a 16K x 3584 dictionary reads its rows once through the mapping to check that they are finite.
- **AxBench** folders: released ``l20/weight.pt`` with ``metadata.jsonl`` and ``acts.json``, or the
  training output ``train/<Method>_weight.pt`` (+ ``<Method>_bias.pt``, ``config.json``) whose
  concepts sit in ``generate/metadata.jsonl``.
- **GemmaScope** SAEs: AxBench's pruned ``GemmaScopeSAE.pt``, the original ``params.npz``, or a
  ``.safetensors`` SAE with the same tensor names (``W_dec``, ``W_enc``, ``b_enc``, ``threshold``,
  ``b_dec``). The decoder rows are the dictionary; detection uses the JumpReLU encoder.
- A **Hugging Face Hub** repo id with an optional ``subfolder`` (``pyvene/gemma-reft-r1-2b-it-res``,
  ``l20``), fetched into the Hub cache by huggingface_hub.

A folder holding one dictionary, or one subfolder holding one, loads without naming the file.
"""

from __future__ import annotations

import operator
import re
from collections import Counter
from pathlib import Path

import torch

from . import formats
from .formats import hub, native

PROVENANCE_KEYS = ("model_name", "layer", "component", "method", "source", "format")
# owner/name, as the Hub spells repo ids; a name ending like a dictionary file is a missing local file.
_HUB_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_FILE_SUFFIXES = (".safetensors", ".pt", ".pth", ".npz")


class ConceptDictionary:
    """Rows ``weight [N, d]`` with detection parameters, concept metadata and provenance.

    Built from tensors (``ConceptDictionary(weight, max_act=..., concepts=[...])``) or read with
    ``load``; ``to`` and ``subset`` return new dictionaries and never change this one.
    ``concepts`` entries are concept texts or dicts with ``concept`` and optionally
    ``concept_id`` (default: the row), ``ref`` and ``genres``.
    """

    def __init__(
        self,
        weight,
        *,
        bias=None,
        max_act=None,
        thresholds=None,
        encoder=None,
        b_enc=None,
        threshold=None,
        b_dec=None,
        concepts=None,
        provenance=None,
    ):
        if not isinstance(weight, torch.Tensor) or not weight.is_floating_point() or weight.dim() != 2:
            raise ValueError(f"weight must be a 2-D floating-point tensor (N, d), got {_describe(weight)}")
        rows, width = weight.shape
        if rows == 0:
            raise ValueError("weight has no rows; a dictionary needs at least one concept")
        if encoder is None and (b_enc is not None or threshold is not None):
            raise ValueError("b_enc and threshold belong to an SAE encoder; pass encoder as well")
        # Detection offsets and thresholds stay float32 in any layer's dtype: the kernels add and
        # compare them in float32, so no call converts them and no threshold is rounded.
        bias = _float32(_model_tensor("bias", bias, (rows,), weight.device))
        encoder = _model_tensor("encoder", encoder, (width, rows), weight.device)
        b_enc = _float32(_model_tensor("b_enc", b_enc, (rows,), weight.device))
        threshold = _float32(_model_tensor("threshold", threshold, (rows,), weight.device))
        b_dec = _model_tensor("b_dec", b_dec, (width,), weight.device)
        max_act = _per_concept("max_act", max_act, rows, weight.device)
        if max_act is None:
            max_act = torch.ones(rows, dtype=torch.float32, device=weight.device)
        thresholds = _per_concept("thresholds", thresholds, rows, weight.device)
        _check_finite(weight=weight, bias=bias, encoder=encoder, b_enc=b_enc, threshold=threshold, b_dec=b_dec,
                      max_act=max_act, thresholds=thresholds)
        concepts = _concept_records(concepts, rows)
        provenance = _provenance(provenance)
        # Everything is checked: only now does the object take its state.
        self.weight, self.bias, self.max_act, self.thresholds = weight, bias, max_act, thresholds
        self.encoder, self.b_enc, self.threshold, self.b_dec = encoder, b_enc, threshold, b_dec
        self.concepts, self.provenance = concepts, provenance
        self._row_of_id = {concept["concept_id"]: row for row, concept in enumerate(concepts)}

    # --- shape and placement ---------------------------------------------------------------

    def __len__(self) -> int:
        return self.weight.shape[0]

    @property
    def d(self) -> int:
        return self.weight.shape[1]

    @property
    def device(self) -> torch.device:
        return self.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.weight.dtype

    @property
    def names(self) -> list[str]:
        return [concept["concept"] for concept in self.concepts]

    def __repr__(self) -> str:
        kind = "SAE" if self.encoder is not None else self.provenance["method"] or "rows"
        return (
            f"ConceptDictionary({len(self)} concepts x d={self.d}, {kind}, {self.dtype}, {self.device}, "
            f"source={self.provenance['source']!r})"
        )

    def to(self, device=None, dtype=None) -> ConceptDictionary:
        """A copy on ``device`` with rows, encoder and b_dec in ``dtype``; the detection offsets and
        thresholds (bias, b_enc, threshold, max_act, thresholds) stay float32."""
        if dtype is not None and not dtype.is_floating_point:
            raise ValueError(f"dtype must be a floating-point type, got {dtype}")

        def move(tensor):
            return None if tensor is None else tensor.to(device=device, dtype=dtype)

        def place(tensor):
            return None if tensor is None else tensor.to(device=device)

        return self._with(
            weight=move(self.weight),
            bias=place(self.bias),
            encoder=move(self.encoder),
            b_enc=place(self.b_enc),
            threshold=place(self.threshold),
            b_dec=move(self.b_dec),
            max_act=place(self.max_act),
            thresholds=place(self.thresholds),
        )

    def subset(self, ids) -> ConceptDictionary:
        """The chosen rows with their metadata, in the order given; each concept keeps its concept_id.

        ``ids`` are row indices (what ``find``, ``by_genre`` and ``lookup`` return) or concept texts.
        """
        rows = [self.lookup(item) if isinstance(item, str) else self._row(item) for item in ids]
        if not rows:
            raise ValueError("subset needs at least one row")
        repeated = sorted(row for row, count in Counter(rows).items() if count > 1)
        if repeated:
            raise ValueError(f"subset lists rows {repeated} more than once")
        index = torch.tensor(rows, device=self.device)

        def pick(tensor, dim=0):
            return None if tensor is None else tensor.index_select(dim, index)

        return self._with(
            weight=pick(self.weight),
            bias=pick(self.bias),
            encoder=pick(self.encoder, dim=1),
            b_enc=pick(self.b_enc),
            threshold=pick(self.threshold),
            max_act=pick(self.max_act),
            thresholds=pick(self.thresholds),
            concepts=[self.concepts[row] for row in rows],
        )

    # --- finding concepts ----------------------------------------------------------------

    def find(self, text: str, limit: int | None = None) -> list[int]:
        """Rows whose concept text contains ``text`` (case-insensitive), best first.

        Ranking: exact text, then whole-word matches, then shorter (more specific) texts, then row order.
        """
        needle = text.strip().casefold()
        if not needle:
            raise ValueError("find needs a non-empty text")
        whole_word = re.compile(rf"\b{re.escape(needle)}\b")
        ranked = []
        for row, name in enumerate(self.names):
            haystack = name.casefold()
            if needle in haystack:
                ranked.append((haystack != needle, not whole_word.search(haystack), len(haystack), row))
        rows = [row for *_, row in sorted(ranked)]
        return rows if limit is None else rows[:limit]

    def lookup(self, concept) -> int:
        """The row of a concept_id (int), or of a concept text: exact, or a fragment only one concept contains."""
        if isinstance(concept, str):
            return self._row_of_text(concept)
        if isinstance(concept, bool):
            raise KeyError(f"a concept is an int id or a text, got {concept!r}")
        concept_id = operator.index(concept)
        if concept_id not in self._row_of_id:
            raise KeyError(f"no concept with id {concept_id} in {self._label()} ({len(self)} concepts)")
        return self._row_of_id[concept_id]

    def by_genre(self, genre: str) -> list[int]:
        """Rows whose genres include ``genre`` (case-insensitive), in row order."""
        wanted = genre.casefold()
        return [row for row, concept in enumerate(self.concepts) if wanted in (g.casefold() for g in concept["genres"])]

    # --- use with a model -----------------------------------------------------------------

    def check_hidden_size(self, hidden_size: int, where: str = "model") -> None:
        if hidden_size != self.d:
            made_for = self.provenance["model_name"]
            hint = f" (it was made for {made_for})" if made_for else ""
            raise ValueError(
                f"{self._label()}: the dictionary's rows have d={self.d} but the {where}'s hidden size is "
                f"{hidden_size}; it belongs to a different model{hint}"
            )

    def detection_kwargs(self) -> dict:
        """Keyword arguments for ``steerkern.detect`` with ``self.weight`` as the dictionary."""
        if self.encoder is not None:
            return {"bias": self.b_enc, "threshold": self.threshold, "encoder": self.encoder}
        return {"bias": self.bias, "threshold": None, "encoder": None}

    # --- files ----------------------------------------------------------------------------

    @classmethod
    def load(cls, source, *, subfolder=None, dtype=None, device=None) -> ConceptDictionary:
        """Read a dictionary file or folder, or a Hugging Face Hub repo id (see the module docstring)."""
        location, hub_name = _locate(source, subfolder)
        file = formats.find_dictionary_file(location)
        parts = formats.read_dictionary(file)
        if hub_name:
            parts["provenance"]["source"] = hub_name
        try:
            dictionary = cls(**parts)
        except ValueError as error:
            raise ValueError(f"{file}: {error}") from error
        if device is None and dtype is None:
            return dictionary
        return dictionary.to(device=device, dtype=dtype)

    def save(self, path) -> None:
        """Write steerkern's ``.safetensors`` format; ``load`` maps it back."""
        path = Path(path)
        if path.suffix != ".safetensors":
            raise ValueError(f"{path}: steerkern saves dictionaries as .safetensors files")
        if not path.parent.is_dir():
            raise FileNotFoundError(f"{path}: the folder {path.parent} does not exist")
        tensors = {name: getattr(self, name) for name in native.TENSORS}
        native.write(path, tensors, self.concepts, self.provenance)

    # --- helpers --------------------------------------------------------------------------

    def _with(self, **changes) -> ConceptDictionary:
        fields = {name: getattr(self, name) for name in native.TENSORS}
        fields.update(concepts=self.concepts, provenance=self.provenance)
        fields.update(changes)
        return type(self)(**fields)

    def _row(self, item) -> int:
        row = operator.index(item)
        if not 0 <= row < len(self):
            raise IndexError(f"row {row} is outside {self._label()} ({len(self)} concepts)")
        return row

    def _row_of_text(self, text: str) -> int:
        folded = text.casefold()
        matches = (
            [row for row, name in enumerate(self.names) if name == text]
            or [row for row, name in enumerate(self.names) if name.casefold() == folded]
            or self.find(text)
        )
        if len(matches) == 1:
            return matches[0]
        if not matches:
            raise KeyError(f"no concept in {self._label()} matches {text!r}")
        shown = "; ".join(f"row {row}: {self.concepts[row]['concept']!r}" for row in matches[:5])
        more = f" and {len(matches) - 5} more" if len(matches) > 5 else ""
        raise KeyError(f"{text!r} matches {len(matches)} concepts ({shown}{more}); give more of the text or an id")

    def _label(self) -> str:
        return self.provenance["source"] or "this dictionary"


def _describe(value) -> str:
    if isinstance(value, torch.Tensor):
        return f"{value.dtype} tensor of shape {tuple(value.shape)}"
    return type(value).__name__


def _model_tensor(name, tensor, shape, device):
    if tensor is None:
        return None
    if not isinstance(tensor, torch.Tensor) or not tensor.is_floating_point() or tuple(tensor.shape) != shape:
        raise ValueError(f"{name} must be a floating-point tensor of shape {shape}, got {_describe(tensor)}")
    if tensor.device != device:
        raise ValueError(f"{name} is on {tensor.device} but weight is on {device}")
    return tensor


def _float32(tensor):
    return None if tensor is None else tensor.float()


def _check_finite(**tensors):
    """Refuse NaN and Inf, which would poison every row they steer or score, naming the first bad
    row (concept) or, for b_dec, the first bad feature. ``thresholds`` may hold NaN: unknown."""
    for name, tensor in tensors.items():
        if tensor is None:
            continue
        if name == "thresholds":
            bad = tensor.isinf()
        elif tensor.dim() == 1:
            bad = ~tensor.isfinite()
        else:
            # NaN and Inf survive a row's sum, which reads a mapped file once without a large
            # temporary; a finite row whose sum overflows is cleared by the exact check below.
            by_concept = tensor.T if name == "encoder" else tensor
            bad = ~by_concept.sum(dim=1).isfinite()
            for row in bad.nonzero().flatten().tolist():
                bad[row] = not by_concept[row].isfinite().all()
        if bad.any():
            index = int(bad.nonzero()[0])
            where = {"b_dec": "feature", "encoder": "column"}.get(name, "row")
            what = "Inf" if name == "thresholds" else "NaN or Inf"
            raise ValueError(f"{name} holds {what} at {where} {index}; a dictionary's values must be finite")


def _per_concept(name, values, rows, device):
    """A float32 (N,) tensor on the rows' device; these are small, so they simply follow the rows."""
    if values is None:
        return None
    values = torch.as_tensor(values)
    if values.shape != (rows,) or values.dtype == torch.bool or values.dtype.is_complex:
        raise ValueError(f"{name} must have shape ({rows},), got {_describe(values)}")
    return values.to(device=device, dtype=torch.float32)


def _concept_records(concepts, rows) -> list[dict]:
    if concepts is None:
        concepts = [f"concept {row}" for row in range(rows)]
    concepts = list(concepts)
    if len(concepts) != rows:
        raise ValueError(f"concepts describes {len(concepts)} concepts but weight has {rows} rows")
    records = [_concept_record(row, concept) for row, concept in enumerate(concepts)]
    seen = set()
    for record in records:
        if record["concept_id"] in seen:
            raise ValueError(f"concept_id {record['concept_id']} appears more than once in concepts")
        seen.add(record["concept_id"])
    return records


def _concept_record(row, concept) -> dict:
    if isinstance(concept, str):
        return {"concept_id": row, "concept": concept, "ref": None, "genres": []}
    if not isinstance(concept, dict) or not isinstance(concept.get("concept"), str):
        raise ValueError(f"concepts[{row}] must be a text or a dict with a 'concept' text, got {concept!r}")
    concept_id = concept.get("concept_id", row)
    if isinstance(concept_id, bool) or not isinstance(concept_id, int):
        raise ValueError(f"concepts[{row}] has concept_id {concept_id!r}; ids are ints")
    genres = concept.get("genres", [])
    if not isinstance(genres, (list, tuple)) or not all(isinstance(genre, str) for genre in genres):
        raise ValueError(f"concepts[{row}] genres must be a list of texts, got {genres!r}")
    return {"concept_id": concept_id, "concept": concept["concept"], "ref": concept.get("ref"), "genres": list(genres)}


def _provenance(provenance) -> dict:
    if provenance is not None and not isinstance(provenance, dict):
        raise ValueError(f"provenance must be a dict, got {type(provenance).__name__}")
    return {**dict.fromkeys(PROVENANCE_KEYS), **(provenance or {})}


def _locate(source, subfolder) -> tuple[Path, str | None]:
    """The local file or folder to read, and the Hub name when it came from the Hub."""
    location = Path(source).expanduser()
    hub_name = None
    if not location.exists():
        name = str(source)
        if not _HUB_REPO_ID.match(name) or name.endswith(_FILE_SUFFIXES):
            raise FileNotFoundError(f"{source}: no such file or folder")
        location = hub.download(name, subfolder)
        hub_name = f"{name}/{subfolder.strip('/')}" if subfolder else name
    if subfolder:
        location = location / subfolder
        if not location.exists():
            raise FileNotFoundError(f"{location}: no such subfolder")
    return location, hub_name
