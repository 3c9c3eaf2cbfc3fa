"""A client whose own data cannot be read stops at once with exit code 2 (a retry cannot help)
and a message naming the file, row and column — no traceback."""

from __future__ import annotations

from helpers.federation import Federation


def test_unreadable_data_exits_2_naming_file_row_and_column(tmp_path, processes):
    fed = Federation.create(tmp_path, scenarios=("S0", "S1"), train_rows=600, test_rows=200)
    train = fed.data / "S1" / "train.csv"
    lines = train.read_text().splitlines()
    header = lines[0].split(",")
    col = header.index("numerical_7")
    row = lines[3].split(",")
    row[col] = "not-a-number"
    lines[3] = ",".join(row)
    train.write_text("\n".join(lines) + "\n")

    processes.launch("aggregator", fed.aggregator_args(rounds=1, min_clients=1))
    client = processes.launch("S1", fed.client_args("S1"))
    assert client.wait(timeout=120) == 2, client.tail()
    log = client.log()
    assert "train.csv" in log and "row 3" in log and "numerical_7" in log, log
    assert "Traceback" not in log
