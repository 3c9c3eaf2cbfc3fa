"""Read and write processed scenario files (CSV or Parquet) as validated ``ScenarioData``.

This module is the public facade: the work is done, one job per module, by
``validation`` (errors, column plan, cell checks), ``sink`` (vectorized checks and
conversion), ``csv_reader``, ``parquet_reader``, ``split_files`` (one file by suffix),
``scenarios`` (listing, train/valid/test) and ``split_writer``; every name is re-exported
here, so ``from msmtrec.data.loader import ...`` keeps working.

Why it is built this way:

* Files hold up to tens of millions of rows, so the happy path has no per-row Python work:
  CSV text is cut into line-aligned byte chunks, each chunk is parsed by ``pyarrow`` (multi
  threaded) and converted column by column into arrays preallocated at their final size.
  Peak memory is the final arrays plus one chunk.
* A bad file must say *where* it is bad. Vectorized checks find the first bad row of a chunk;
  when pyarrow cannot even parse a chunk, a slow pure-Python pass over that chunk only finds
  the exact row and column. ``DataValidationError`` names the file, the 1-based data row
  (header excluded, blank lines not counted) and the column.
* Columns are matched by name, so extra columns are ignored and column order is free.
* Vocabulary sizes come from the schema: ids ``>= vocab_size`` go to the out-of-vocabulary
  slot ``vocab_size`` and are counted per field. Features of a *hashed* table (a spec's
  ``hash_buckets``) hold raw ids of any size; they are mapped into the table by
  ``msmtrec.data.hashing.hash_ids``, the function the gateway uses, so an id lands in the same
  row at training and at serving time. (CSV ids are parsed as float64: exact below 2**53.)
* Numericals get the spec's normalization (``log1p`` needs values > -1; ``standard`` is
  ``(x - mean) / std``); AliExpress has none, so its arrays are the file's values, bit for bit.
* Chained tasks (a spec's ``parent``: ESMM's ``ctcvr = ctr x cvr``) must have a label no
  larger than the parent's. The AliExpress layout (tasks ``ctr``, ``ctcvr`` with no parent
  declared) keeps its implicit chain: conversion cannot exceed click.
"""

from __future__ import annotations

from msmtrec.data.csv_reader import DEFAULT_CHUNK_BYTES as DEFAULT_CHUNK_BYTES
from msmtrec.data.csv_reader import iter_line_chunks
from msmtrec.data.parquet_reader import open_parquet, read_row_group
from msmtrec.data.scenarios import list_scenarios, load_scenario, scenario_column_values
from msmtrec.data.split_files import CSV_SUFFIXES, PARQUET_SUFFIXES, find_split_file, load_split
from msmtrec.data.split_writer import write_split

# Shared internals that other readers (stream, tenrec_raw) import from here.
from msmtrec.data.validation import NULL_TOKENS as NULL_TOKENS
from msmtrec.data.validation import DataValidationError, label_chains
from msmtrec.data.validation import _check_columns as _check_columns
from msmtrec.data.validation import _diagnose_rows as _diagnose_rows
from msmtrec.data.validation import _Plan as _Plan
from msmtrec.data.validation import _value_problem as _value_problem
from msmtrec.data.validation import categorical_dtype as categorical_dtype

__all__ = [
    "CSV_SUFFIXES",
    "PARQUET_SUFFIXES",
    "DataValidationError",
    "find_split_file",
    "iter_line_chunks",
    "label_chains",
    "list_scenarios",
    "load_scenario",
    "load_split",
    "open_parquet",
    "read_row_group",
    "scenario_column_values",
    "write_split",
]
