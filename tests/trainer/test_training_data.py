"""Timelines → tensors through Arrow columns: known answers computed by hand, Arrow vs dict input,
and the chunked parquet path (`trainer.parquet_data`) against the in-memory one."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
import torch
import yaml
from timeline_files import write_run_config, write_timelines
from trainer_timelines import _row, fit_spec, make_bandit_timelines

from features import save_spec
from infra.cli import main as streamrl
from stream import load_timelines, timeline_files
from trainer import ModelRegistry, TrainingDataError, load_run_config
from trainer._columns import FEATURE_MAP, feature_matrix, name_mask, string_codes
from trainer.data import REQUIRED_COLUMNS, build_transitions, discounted_returns
from trainer.nstep import n_step_transitions
from trainer.parquet_data import stream_transitions, training_transitions

GAMMA = 0.5
ACTIONS = ["go", "stop"]


def _step(mdp: str, seq: int, reward: float, *, last: bool) -> dict:
    follow = (
        {} if last else {"next_state": {"x": float(seq + 1)}, "next_action": "go", "next_possible": ACTIONS}
    )
    return _row(mdp, seq, {"x": float(seq), "y": 10.0 * seq}, "go", reward, ACTIONS, **follow)


def _two_mdps() -> pd.DataFrame:
    """MDP a: rewards 1, 2, 4 (seq 0, 5, 9); MDP b: rewards 3, 1 (seq 2, 7); rows shuffled."""
    rows = [
        _step("b", 7, 1.0, last=True),
        _step("a", 5, 2.0, last=False),
        _step("b", 2, 3.0, last=False),
        _step("a", 9, 4.0, last=True),
        _step("a", 0, 1.0, last=False),
    ]
    return pd.DataFrame(rows)


def test_discounted_returns_follow_sequence_numbers_within_each_mdp() -> None:
    frame = _two_mdps()
    # a: G(9) = 4, G(5) = 2 + 0.5·4 = 4, G(0) = 1 + 0.5·4 = 3;  b: G(7) = 1, G(2) = 3 + 0.5·1 = 3.5
    expected = [1.0, 4.0, 3.5, 4.0, 3.0]

    assert discounted_returns(frame, frame["reward"].to_numpy(), GAMMA).tolist() == expected
    data = build_transitions(frame, ["x", "y"], ACTIONS, GAMMA)
    assert data.mc_returns.tolist() == expected
    assert data.discounts.tolist() == [GAMMA] * 5


def test_n_step_targets_by_hand_on_shuffled_rows_of_two_mdps() -> None:
    frame = _two_mdps()
    data = n_step_transitions(frame, build_transitions(frame, ["x", "y"], ACTIONS, GAMMA), 2, GAMMA)

    # a(0): 1 + 0.5·2 → bootstrap from a(5)'s next state (x = 6) at γ²; a(5): 2 + 0.5·4, terminal;
    # a(9): 4, terminal; b(2): 3 + 0.5·1, terminal; b(7): 1, terminal.
    assert data.rewards.tolist() == [1.0, 4.0, 3.5, 4.0, 2.0]
    assert data.not_terminal.tolist() == [0.0, 0.0, 0.0, 0.0, 1.0]
    assert data.discounts.tolist() == [GAMMA, GAMMA**2, GAMMA**2, GAMMA, GAMMA**2]
    assert data.next_states[4, 0].item() == 6.0


def test_map_columns_with_missing_keys_read_nan_and_unknown_keys_are_ignored() -> None:
    maps = [
        {"a": 1.0, "b": 2.0},
        {"b": 3.0, "zz": 9.0},
        None,
        {},
        {"a": None, "c": 4.0},
        [("c", 5.0), ("a", 6.0)],
    ]
    matrix = feature_matrix(maps, ["c", "a", "b"])
    nan = math.nan
    expected = np.array(
        [[nan, 1, 2], [nan, nan, 3], [nan, nan, nan], [nan, nan, nan], [4, nan, nan], [5, 6, nan]], np.float32
    )
    np.testing.assert_array_equal(matrix, expected)
    assert matrix.dtype == np.float32


def test_rows_sharing_one_key_order_give_the_same_matrix_as_the_general_path() -> None:
    names = ["k1", "k0", "k2"]
    same_order = [{"k0": float(i), "k1": None if i % 3 == 0 else 2.0 * i, "k9": 1.0} for i in range(7)]
    sliced = pa.array(same_order, FEATURE_MAP).slice(2)  # an Arrow slice keeps its offsets

    np.testing.assert_array_equal(
        feature_matrix(sliced, names),
        np.array([[2.0 * i if i % 3 else np.nan, i, np.nan] for i in range(2, 7)], np.float32),
    )
    mixed = same_order + [{"k2": 7.0}]
    np.testing.assert_array_equal(feature_matrix(mixed, names)[-1], [np.nan, np.nan, 7.0])


def test_arrow_table_and_pandas_dicts_give_the_same_tensors() -> None:
    frame = make_bandit_timelines(40, seed=2)  # x2 missing in some rows
    frame.loc[3, "not_terminal"] = True
    frame.at[3, "next_state_features"] = {"x1": 0.25}
    frame.at[3, "possible_next_actions"] = ["up"]
    table = pa.table(
        {
            name: pa.array(
                frame[name].tolist(),
                FEATURE_MAP if name.endswith("state_features") else None,
            )
            for name in REQUIRED_COLUMNS
        }
    )
    assert pa.types.is_map(table.schema.field("state_features").type)
    from_frame = build_transitions(frame, ["x1", "x2"], ["up", "down", "stay"], 0.9, reward_clip=0.5)
    from_table = build_transitions(table, ["x1", "x2"], ["up", "down", "stay"], 0.9, reward_clip=0.5)
    _assert_same(from_frame, from_table)
    assert torch.isnan(from_frame.states[:, 1]).any()


def _assert_same(a, b) -> None:
    for name in a.__dataclass_fields__:
        x, y = getattr(a, name), getattr(b, name)
        assert x.dtype == y.dtype and x.shape == y.shape, name
        assert torch.equal(torch.nan_to_num(x, nan=-1e9), torch.nan_to_num(y, nan=-1e9)), name


def _shuffled_chain_timelines() -> pd.DataFrame:
    """40 MDPs of 1–6 steps over several days, rows shuffled, some state keys missing."""
    rng = np.random.default_rng(7)
    rows = []
    for m in range(40):
        length = int(rng.integers(1, 7))
        for seq in range(length):
            last = seq == length - 1
            row = _step(f"m{m:02d}", seq, float(rng.normal()), last=last and m % 4 != 0)
            if rng.random() < 0.3:
                row["state_features"] = {"x": row["state_features"]["x"]}
            row["timestamp"] = row["timestamp"] + pd.Timedelta(minutes=97 * m)
            row["ds"] = row["timestamp"].strftime("%Y-%m-%d")
            rows.append(row)
    return pd.DataFrame(rows).sample(frac=1.0, random_state=1).reset_index(drop=True)


@pytest.mark.parametrize("n_step", [1, 3])
def test_chunked_parquet_gives_exactly_the_in_memory_tensors(tmp_path: Path, n_step: int) -> None:
    write_timelines(_shuffled_chain_timelines(), tmp_path)
    start, end = (
        pd.Timestamp("2026-11-23T12:00Z").to_pydatetime(),
        pd.Timestamp("2026-11-25T02:00Z").to_pydatetime(),
    )
    frame = load_timelines(tmp_path, start, end)
    assert frame["ds"].nunique() > 1 and 0 < len(frame) < len(_shuffled_chain_timelines())

    in_memory = training_transitions(frame, ["y", "x"], ACTIONS, 0.9, 0.8, n_step)
    prepared = stream_transitions(
        timeline_files(tmp_path), ["y", "x"], ACTIONS, 0.9, 0.8, n_step, batch_rows=7, start=start, end=end
    )

    _assert_same(in_memory, prepared.transitions)
    assert prepared.data_range.rows == len(frame)
    assert prepared.data_range.start == frame["timestamp"].min().to_pydatetime()
    assert prepared.data_range.end == frame["timestamp"].max().to_pydatetime()
    head = frame.head(len(prepared.head))
    assert prepared.head["mdp_id"].tolist() == head["mdp_id"].tolist()
    # read with names dictionary-encoded, the head is cast back to what load_timelines gives
    for name in ("state_features", "next_state_features", "possible_actions", "possible_next_actions"):
        is_map = name.endswith("features")
        assert [_plain(v, is_map) for v in prepared.head[name]] == [_plain(v, is_map) for v in head[name]], (
            name
        )


def _plain(value: object, is_map: bool) -> object:
    """A map cell (dict or (key, value) pairs) as a dict, a list cell as a list of str, None as None."""
    if value is None:
        return None
    return dict(value.items() if isinstance(value, dict) else value) if is_map else [str(v) for v in value]


def _errors_of_both_paths(frame: pd.DataFrame, root: Path, batch_rows: int) -> tuple[Exception, Exception]:
    """The TrainingDataError of the in-memory path and of the chunked one on `frame` written under `root`."""
    write_timelines(frame, root)
    loaded = load_timelines(root)
    with pytest.raises(TrainingDataError) as in_memory:
        build_transitions(loaded, ["x"], ACTIONS, 0.9)
    with pytest.raises(TrainingDataError) as chunked:
        stream_transitions(timeline_files(root), ["x"], ACTIONS, 0.9, batch_rows=batch_rows)
    return in_memory.value, chunked.value


def test_chunked_errors_name_the_rows_the_in_memory_path_names(tmp_path: Path) -> None:
    frame = _shuffled_chain_timelines()
    same_file = frame.index[frame["ds"] == frame.at[0, "ds"]][[0, -1]]  # one file per day; batches of 1000
    frame.loc[same_file, "action"] = "fly"
    in_memory, chunked = _errors_of_both_paths(frame, tmp_path, batch_rows=1000)

    assert chunked.column == in_memory.column == "action"
    assert chunked.rows == in_memory.rows and len(chunked.rows) == 2
    assert str(chunked) == str(in_memory)


def test_an_unknown_possible_action_is_named_alike_in_both_paths(tmp_path: Path) -> None:
    # possible_actions are read dictionary-encoded on the chunked path; the unknown name must still read
    frame = _shuffled_chain_timelines()
    frame.at[4, "possible_actions"] = ["go", "fly"]
    in_memory, chunked = _errors_of_both_paths(frame, tmp_path, batch_rows=5)

    assert "fly" in str(in_memory)
    assert str(chunked) == str(in_memory)


def test_dictionary_encoded_names_get_the_codes_of_plain_strings() -> None:
    plain = pa.array(["b", None, "zz", "a", "b", "a"], pa.string())
    coded = plain.dictionary_encode()
    assert pa.types.is_dictionary(coded.type)
    # by hand: names [a, b] → b=1, null=−1, zz=−1, a=0, b=1, a=0
    assert string_codes(coded, ["a", "b"]).tolist() == [1, -1, -1, 0, 1, 0]
    assert string_codes(plain, ["a", "b"]).tolist() == [1, -1, -1, 0, 1, 0]
    maps = pa.array([{"a": 1.0, "b": 2.0}, {"a": 3.0, "b": None}], FEATURE_MAP)
    keys = maps.values.field(0).dictionary_encode()
    coded_maps = pa.MapArray.from_arrays(maps.offsets, keys, maps.values.field(1))
    np.testing.assert_array_equal(feature_matrix(coded_maps, ["b", "a"]), [[2.0, 1.0], [np.nan, 3.0]])


def test_a_few_python_lists_mask_as_arrow_columns_do() -> None:
    lists = [["b", "a"], None, ["c", "a", None], [], ["zz", "a", "zz"]]
    # by hand, names [a, b, c]: rows a+b, none, c+a (+ a null entry), none, a (+ zz twice)
    expected = np.array([[1, 1, 0], [0, 0, 0], [1, 0, 1], [0, 0, 0], [1, 0, 0]], np.float32)
    for given in (lists, pa.array(lists, pa.list_(pa.string())), lists * 20):  # small, Arrow, > 64 rows
        names = name_mask(given, ["a", "b", "c"])
        rows = len(given)
        np.testing.assert_array_equal(names.mask, np.tile(expected, (rows // 5, 1)))
        assert names.unknown == {
            "None": [2 + 5 * k for k in range(rows // 5)],
            "zz": [r for k in range(rows // 5) for r in (4 + 5 * k, 4 + 5 * k)],
        }


def test_rows_listing_the_same_names_or_none_mask_by_one_template() -> None:
    # next actions as timelines hold them: the same list in every row, empty at terminal rows
    lists = [["b", "a"], [], ["b", "a"], ["b", "a"], []]
    expected = np.array([[1, 1, 0], [0, 0, 0], [1, 1, 0], [1, 1, 0], [0, 0, 0]], np.float32)
    plain = pa.array(lists, pa.list_(pa.string()))
    coded = pa.ListArray.from_arrays(plain.offsets, plain.values.dictionary_encode())
    for given in (plain, coded):
        names = name_mask(given, ["a", "b", "c"])
        np.testing.assert_array_equal(names.mask, expected)
        assert names.unknown == {}
    # the same shape with a name outside the vocabulary still reports it, row by row
    unknown = name_mask(pa.array([["b", "zz"], [], ["b", "zz"]], pa.list_(pa.string())), ["a", "b"])
    np.testing.assert_array_equal(unknown.mask, [[0, 1], [0, 0], [0, 1]])
    assert unknown.unknown == {"zz": [0, 2]}


def test_streamrl_train_reads_batches_when_the_run_config_says_so(tmp_path: Path) -> None:
    timelines = make_bandit_timelines(300, seed=3)
    write_timelines(timelines, tmp_path / "stream")
    save_spec(fit_spec(timelines), tmp_path / "spec")
    path = write_run_config(tmp_path, {"gamma": 0.0, "batch_size": 64, "hidden_sizes": [8], "num_epochs": 1})
    document = yaml.safe_load(path.read_text())
    document["data"]["batch_rows"] = 64
    path.write_text(yaml.safe_dump(document))

    with pytest.raises(Exception, match="needs normalization.spec_path"):
        load_run_config(path)
    document["normalization"] = {"spec_path": str(next((tmp_path / "spec").glob("*.json")))}
    path.write_text(yaml.safe_dump(document))

    assert streamrl(["train", "--config", str(path)]) == 0
    (version,) = ModelRegistry(tmp_path / "registry").list_versions()
    assert ModelRegistry(tmp_path / "registry").metadata(version).data_range.rows == 300
