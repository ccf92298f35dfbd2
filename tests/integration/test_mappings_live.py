"""`erpsync mappings check --live`: the mappings against the live databases, as the capture logins see them."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

from schemas.mapping import MAPPINGS_DIR
from schemas.registry import SCHEMA_DIR


def check(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "erpsync", "mappings", "check", "--live", *args],
                          capture_output=True, text=True, env=env, timeout=120, check=False)


def test_the_packaged_mappings_pass_live() -> None:
    done = check()
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.strip().endswith("the live databases' information_schema (erp, wms, as their capture "
                                        "logins): ok")


def test_a_live_table_that_differs_from_the_mapping(tmp_path: Path, erp: Any) -> None:
    """A table only the live database has, whose decimal scale the mapping gets wrong."""
    table = f"zz_suppliers_{uuid.uuid4().hex[:8]}"
    example = MAPPINGS_DIR / "example"
    shutil.copytree(SCHEMA_DIR, tmp_path / "avro")
    shutil.copy(example / "supplier.avsc", tmp_path / "avro")
    shutil.copytree(MAPPINGS_DIR, tmp_path / "mappings", ignore=shutil.ignore_patterns("example", "*.md"))
    mapping = tmp_path / "mappings" / f"erp.{table}.toml"
    mapping.write_text((example / "erp.suppliers.toml").read_text().replace('"erp.suppliers"', f'"erp.{table}"'))
    ddl = (example / "erp.suppliers.postgres.sql").read_text().replace("erp.suppliers", f"erp.{table}")
    erp.execute(ddl.replace("numeric(12,2)", "numeric(12,4)"))
    try:
        done = check("--schemas", str(tmp_path / "avro"), "--mappings", str(tmp_path / "mappings"))
    finally:
        erp.execute(f"DROP TABLE erp.{table}")
    assert done.returncode == 1
    assert done.stdout.splitlines()[0] == (f"{mapping}: fields.min_order_value: erp.{table}.min_order_value is "
                                           "numeric(12,4): its scale is 4: use decimal:4")
    # The same mapping against the DDL it was written for passes: only the live check sees the drift.
    (tmp_path / "ref").mkdir()
    for sql in [*(Path(__file__).resolve().parents[2] / "reference").glob("*.sql")]:
        shutil.copy(sql, tmp_path / "ref")
    (tmp_path / "ref" / f"{table}.postgres.sql").write_text(ddl)
    offline = subprocess.run([sys.executable, "-m", "erpsync", "mappings", "check", "--schemas", str(tmp_path / "avro"),
                              "--mappings", str(tmp_path / "mappings"), "--reference", str(tmp_path / "ref")],
                             capture_output=True, text=True, timeout=120, check=False)
    assert offline.returncode == 0, offline.stdout


def test_an_unreachable_database_is_its_own_exit_status() -> None:
    env = dict(os.environ, ERPSYNC_WMS__PORT="1")
    done = check(env=env)
    assert done.returncode == 3
    lines = [line for line in done.stdout.splitlines() if "wms." in line]
    assert lines and all(": table: cannot check wms." in line and "cannot read the information_schema of wms at "
                         "127.0.0.1:1 as erpsync_capture" in line for line in lines), done.stdout
