"""Use a trained classifier: label a file of texts from a run's checkpoint or from an export, and export a
run's checkpoint as a directory that needs neither the run store nor the model it was trained from.

    predict(input, output, run=ID | model=DIR) -> Predicted: OUT holds the input's columns, then `label` and
        `prob_<label>` per class, one row per input row, in input order
    export(run_id, directory) -> Exported: DIR holds the encoder and its tokenizer (save_pretrained), the head
        (head.safetensors) and classifier.json (the labels, the head's shape, and what predict needs)

Weights load from safetensors and settings from JSON only: no pickle, no remote code. Every UserError is
raised before anything is written, and what is written appears whole (written aside, then renamed) or not
at all.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import torch

from accumbench.backends.base import logits_by_length
from accumbench.backends.device import local_device
from accumbench.data import pipeline
from accumbench.data.sources import FILE_FORMATS, read_tables
from accumbench.errors import UserError, first_line
from accumbench.files import check_output_file, write_aside
from accumbench.model import TextClassifier, embeds_segments, quiet_loading, resolve_model_source
from accumbench.runtime.checkpoints import CHECKPOINT_META, CHECKPOINT_WEIGHTS

EXPORT_SPEC, EXPORT_HEAD = "classifier.json", "head.safetensors"
EXPORT_FORMAT, EXPORT_VERSION = "accumbench-classifier", 1
LOAD_ERRORS = (OSError, ValueError, KeyError, RuntimeError)  # what transformers and safetensors raise for bad files


@dataclass
class Classifier:
    """What a checkpoint or an export says of its classifier, read before any weights load (so bad input
    is refused at once)."""

    origin: str  # "run 3 (epoch 2)" or "export DIR (run 3, epoch 2)": for messages and the summary
    directory: Path
    is_export: bool
    model_name: str  # the --model it was trained from
    label_names: list[str]
    max_length: int
    pooling: str
    columns: tuple[str, ...]  # the text column(s) it was trained on: one, or a pair's two
    text_column: str | None  # named at training (--text-column); None: detected
    text_pair_column: str | None
    positive_label: str | None
    run_id: int | None
    epoch: int | None
    run_config: dict[str, Any] = field(default_factory=dict)

    @property
    def is_pair(self) -> bool:
        return len(self.columns) == 2


def run_classifier(run_id: int, db: str | None = None) -> Classifier:
    """The classifier a run kept as its checkpoint (its best validation epoch). UserError for an unknown run,
    a run without a checkpoint, and a checkpoint whose files are gone."""
    from accumbench.store import display_url, open_for_reading

    with open_for_reading(db) as store:
        try:
            run = store.get_run(run_id)
        except KeyError:
            raise UserError(f"no run {run_id} in {display_url(store.url)}; pass the id that train printed "
                            "('run id N recorded in ...'), or the --db it trained into") from None
    if not run.get("checkpoint_path"):
        raise UserError(f"run {run_id} has no checkpoint (trained with --no-checkpoint, or stopped before its first "
                        "epoch ended); train it again with --checkpoint to keep its best epoch")
    directory = Path(run["checkpoint_path"])
    for name in (CHECKPOINT_WEIGHTS, CHECKPOINT_META):
        if not (directory / name).is_file():
            raise UserError(f"the checkpoint of run {run_id} is gone ({directory / name} does not exist); restore "
                            "that directory, or train again with --checkpoint")
    try:
        meta = json.loads((directory / CHECKPOINT_META).read_text())
        config, epoch, labels = meta["config"], int(meta["epoch"]), [str(name) for name in meta["label_names"]]
        recorded = run.get("text_columns")
        # A run recorded before text_columns was: its configuration names them, or it read the usual 'text'.
        columns = tuple(recorded.split(",")) if recorded else tuple(
            c for c in (config.get("text_column") or "text", config.get("text_pair_column")) if c)
        return Classifier(
            origin=f"run {run_id} (epoch {epoch})", directory=directory, is_export=False, model_name=config["model"],
            label_names=labels, max_length=int(config["max_length"]), pooling=config["pooling"], columns=columns,
            text_column=config.get("text_column"), text_pair_column=config.get("text_pair_column"),
            positive_label=run.get("positive_label"), run_id=run_id, epoch=epoch, run_config=config)
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise UserError(f"{directory / CHECKPOINT_META} cannot be read ({type(exc).__name__}: {first_line(exc)}); "
                        "train the run again with --checkpoint") from None


def export_classifier(directory: Path) -> Classifier:
    """The classifier of a directory that `export` wrote. UserError when the directory is not one."""
    spec_path = directory / EXPORT_SPEC
    if not directory.exists():
        raise UserError(f"--model {directory} does not exist; pass the directory accumbench export wrote")
    if not spec_path.is_file():
        raise UserError(f"--model {directory} is not an accumbench export (no {EXPORT_SPEC} in it); write one with "
                        f"accumbench export --run ID {directory}, or predict from the store with --run ID")
    try:
        spec = json.loads(spec_path.read_text())
        if spec.get("format") != EXPORT_FORMAT or spec.get("version") != EXPORT_VERSION:
            raise ValueError(f"format {spec.get('format')!r} version {spec.get('version')!r}, "
                             f"not {EXPORT_FORMAT!r} version {EXPORT_VERSION}")
        labels, head, trained = [str(name) for name in spec["labels"]], spec["head"], spec["trained"]
        if int(head["out_features"]) != len(labels):
            raise ValueError(f"a head of {head['out_features']} outputs for {len(labels)} labels")
        missing = [name for name in ("config.json", EXPORT_HEAD) if not (directory / name).is_file()]
        if missing:
            raise ValueError(f"{', '.join(missing)} missing")
        return Classifier(
            origin=f"export {directory} (run {trained['run_id']}, epoch {trained['epoch']})", directory=directory,
            is_export=True, model_name=trained["model"], label_names=labels, max_length=int(spec["max_length"]),
            pooling=spec["pooling"], columns=tuple(spec["text_columns"]), text_column=spec["text_column"],
            text_pair_column=spec["text_pair_column"], positive_label=spec["positive_label"],
            run_id=trained["run_id"], epoch=trained["epoch"], run_config=spec.get("run_config", {}))
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise UserError(f"--model {directory} is not a usable accumbench export ({type(exc).__name__}: "
                        f"{first_line(exc)}); export the run again with accumbench export --run ID DIR") from None


def load_model(classifier: Classifier) -> tuple[Any, TextClassifier]:
    """(tokenizer, classifier in eval mode on the CPU) with the checkpoint's or the export's weights.
    UserError when they cannot be loaded. The head's dropout is moot: nothing here trains."""
    from safetensors.torch import load_file
    from safetensors.torch import load_model as load_weights
    from transformers import AutoConfig, AutoModel, AutoTokenizer

    where = classifier.directory
    with quiet_loading():  # an export's encoder lacks BERT's pooler on purpose: no load report
        try:
            if classifier.is_export:
                tokenizer = AutoTokenizer.from_pretrained(where)
                encoder, info = AutoModel.from_pretrained(where, output_loading_info=True)
                unloaded = [k for k in info["missing_keys"] if not k.startswith("pooler.")]
                if unloaded or info["unexpected_keys"] or info["mismatched_keys"]:
                    raise ValueError(f"the encoder's weights do not fit its config.json ({', '.join(unloaded)})")
                model = TextClassifier(encoder, len(classifier.label_names), 0.0, classifier.pooling)
                model.head.load_state_dict(load_file(where / EXPORT_HEAD))
            else:
                # The trained weights replace every pretrained one: the architecture alone is built.
                source = _trained_from(classifier)
                tokenizer = AutoTokenizer.from_pretrained(source)
                encoder = AutoModel.from_config(AutoConfig.from_pretrained(source))
                model = TextClassifier(encoder, len(classifier.label_names), 0.0, classifier.pooling)
                load_weights(model, where / CHECKPOINT_WEIGHTS, strict=True)
        except LOAD_ERRORS as exc:
            what = f"export {where}" if classifier.is_export else f"model '{classifier.model_name}' for {where}"
            raise UserError(f"the {what} could not be loaded ({type(exc).__name__}: {first_line(exc)}); "
                            + ("export the run again" if classifier.is_export else
                               "the model it trained from must be available (offline, only cached hub ids are)")
                            ) from None
    return tokenizer, model.eval()


def _trained_from(classifier: Classifier) -> str:
    """Where the model a checkpoint was trained from loads from (its config and tokenizer are not in the
    checkpoint)."""
    try:
        return resolve_model_source(classifier.model_name)
    except UserError as exc:
        raise UserError(f"{classifier.origin} was trained from --model {classifier.model_name}, which is not here "
                        f"({exc}); export the run where it is (accumbench export) and predict with --model DIR"
                        ) from None


@torch.inference_mode()
def class_probabilities(model: TextClassifier, tokenizer: Any, texts: Sequence[str], pairs: Sequence[str] | None,
                        max_length: int, batch_size: int = 64, device: torch.device | None = None
                        ) -> tuple[list[int], list[list[float]]]:
    """(predicted class id, class probabilities) of each text or pair, in input order: the argmax of the
    logits, as training's evaluation takes it, and their softmax in float64. Tokenized as in training;
    batched by length to cut padding, which changes no prediction (padding is masked)."""
    if not texts:
        return [], []
    device = device or local_device()
    model.to(device)
    split = pipeline.TextSplit(list(texts), [0] * len(texts), None if pairs is None else list(pairs))
    encoded = pipeline.tokenize(split, tokenizer, max_length, segment_ids=embeds_segments(model.encoder))
    labels, probabilities = [0] * len(encoded), [[0.0]] * len(encoded)
    for indices, _batch, logits in logits_by_length(model, encoded.lengths, batch_size, partial(
            pipeline.collate, encoded, pad_token_id=tokenizer.pad_token_id), device):
        for i, guess, row in zip(indices, logits.argmax(dim=-1).tolist(), torch.softmax(logits, -1).tolist()):
            labels[i], probabilities[i] = guess, row
    return labels, probabilities


def read_input(path: Path) -> dict[str, list]:
    """The input file's columns (CSV, TSV, JSON, JSON lines or parquet, read as training reads a file)."""
    if not path.exists():
        raise UserError(f"input {path} does not exist; check the INPUT path")
    if not path.is_file() or path.suffix.lower() not in FILE_FORMATS:
        raise UserError(f"input {path} is not a {', '.join(FILE_FORMATS)} file; pass one")
    return next(iter(read_tables(str(path)).values()))


def input_columns(classifier: Classifier, table: dict[str, list], source: str, text_column: str | None = None,
                  text_pair_column: str | None = None) -> tuple[str, ...]:
    """The input's text column, or a pair's two, by training's rules: the columns named here, else those named
    at training (which must then exist), else the columns trained on when the input has them, else detected
    as training detects them. UserError when the input has none, or a pair for single texts or vice versa."""
    if text_column is None and text_pair_column is None:
        text_column, text_pair_column = classifier.text_column, classifier.text_pair_column
        if text_column is None and text_pair_column is None and all(c in table for c in classifier.columns):
            text_column, text_pair_column = (*classifier.columns, None)[:2]
    trained = " + ".join(classifier.columns)
    if not classifier.is_pair and text_pair_column is not None:
        raise UserError(f"the model was trained on single texts (column {trained}); drop --text-pair-column")
    found = pipeline.text_columns(source, table, text_column, text_pair_column)
    if classifier.is_pair and len(found) == 1:
        raise UserError(f"the model was trained on pairs ({trained}), but {source} gives one text ({found[0]}; "
                        f"columns: {', '.join(table)}); name both with --text-column and --text-pair-column")
    if not classifier.is_pair and len(found) == 2:
        raise UserError(f"the model was trained on single texts (column {trained}), but {source} has the pair "
                        f"columns {' + '.join(found)}; name the text column with --text-column")
    return found


@dataclass
class Predicted:
    """What predict wrote."""

    output: Path
    rows: int
    labelled: int  # rows with a text: one without (an empty cell) gets no label, as training drops it
    columns: tuple[str, ...]  # the input's text column(s)
    origin: str
    device: str
    renamed: dict[str, str]  # input columns renamed because their names are predict's own (label, prob_*)


def predict(input_path: Path, output: Path, run: int | None = None, model: Path | None = None, db: str | None = None,
            text_column: str | None = None, text_pair_column: str | None = None, batch_size: int = 64) -> Predicted:
    """Label every row of `input_path` with the classifier of a run's checkpoint (`run`, from the store `db`)
    or of an export (`model`), and write them to `output` (CSV; TSV for a .tsv name): the input's columns,
    then `label` and `prob_<label>` per class. UserError on bad input, before anything is written."""
    input_path, output = Path(input_path).expanduser(), Path(output).expanduser()
    if (run is None) == (model is None):
        raise UserError("pass one of --run ID (a run's checkpoint in the store) or --model DIR (an export)")
    if batch_size < 1:
        raise UserError(f"--batch-size must be at least 1, got {batch_size}")
    check_output_file(output, "-o", "predictions.csv")
    classifier = run_classifier(run, db) if run is not None else export_classifier(Path(model).expanduser())
    table = read_input(input_path)
    columns = input_columns(classifier, table, str(input_path), text_column, text_pair_column)
    tokenizer, net = load_model(classifier)
    values = [table[c] for c in columns]
    rows = [i for i, texts in enumerate(zip(*values)) if not any(pipeline.is_missing(t) for t in texts)]
    device = local_device()
    ids, probabilities = class_probabilities(
        net, tokenizer, [str(values[0][i]) for i in rows], [str(values[1][i]) for i in rows] if len(values) == 2 else None,
        classifier.max_length, batch_size, device)
    predicted = dict(zip(rows, zip(ids, probabilities)))
    ours = ["label", *(f"prob_{name}" for name in classifier.label_names)]
    renamed = _renamed(list(table), ours)
    size = len(values[0])

    def write(path: Path) -> None:
        with path.open("w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle, delimiter="\t" if output.suffix.lower() == ".tsv" else ",")
            writer.writerow([renamed.get(c, c) for c in table] + ours)
            for i in range(size):
                label, probs = predicted.get(i, (None, [None] * len(classifier.label_names)))
                writer.writerow([table[c][i] for c in table] + [None if label is None else classifier.label_names[label],
                                                                *probs])

    write_aside(output, write)
    return Predicted(output, size, len(rows), columns, classifier.origin, device.type, renamed)


def _renamed(columns: list[str], ours: list[str]) -> dict[str, str]:
    """Input columns that carry predict's own names (a labelled file's `label`) keep their values as input_<name>."""
    renamed = {}
    for column in columns:
        if column in ours:
            new = f"input_{column}"
            while new in columns or new in ours:
                new = f"input_{new}"
            renamed[column] = new
    return renamed


@dataclass
class Exported:
    """What export wrote."""

    directory: Path
    origin: str
    label_names: list[str]


def export(run_id: int, directory: Path, db: str | None = None) -> Exported:
    """Write run `run_id`'s checkpoint to `directory` (new, or empty) as predict --model loads it: the encoder
    and tokenizer (save_pretrained, safetensors), the head (head.safetensors) and classifier.json. UserError
    on bad input, before anything is written."""
    from safetensors.torch import save_file

    directory = Path(directory).expanduser()
    if directory.exists() and (not directory.is_dir() or any(directory.iterdir())):
        raise UserError(f"{directory} exists and is not an empty directory; export into a new or empty one")
    if not directory.absolute().parent.is_dir():
        raise UserError(f"the directory {directory.absolute().parent} does not exist; create it, or export elsewhere")
    classifier = run_classifier(run_id, db)
    tokenizer, model = load_model(classifier)
    spec = dict(
        format=EXPORT_FORMAT, version=EXPORT_VERSION, labels=classifier.label_names,
        head=dict(file=EXPORT_HEAD, in_features=model.head.in_features, out_features=model.head.out_features),
        pooling=classifier.pooling, max_length=classifier.max_length, text_columns=list(classifier.columns),
        text_column=classifier.text_column, text_pair_column=classifier.text_pair_column,
        positive_label=classifier.positive_label,
        trained=dict(run_id=run_id, epoch=classifier.epoch, model=classifier.model_name,
                     dataset=classifier.run_config.get("dataset")),
        run_config=classifier.run_config,
    )

    def write(path: Path) -> None:
        path.mkdir()
        with quiet_loading():  # no progress bar or log line between the command and its one line
            model.encoder.save_pretrained(path)
            tokenizer.save_pretrained(path)
        save_file({name: tensor.detach().cpu().contiguous() for name, tensor in model.head.state_dict().items()},
                  str(path / EXPORT_HEAD))
        (path / EXPORT_SPEC).write_text(json.dumps(spec, indent=2))
        # safetensors writes its files for their owner alone; an export is made to be handed on, so every
        # file gets the permissions the umask gives the JSON.
        for written in path.iterdir():
            written.chmod((path / EXPORT_SPEC).stat().st_mode)

    write_aside(directory, write)
    return Exported(directory, classifier.origin, classifier.label_names)
