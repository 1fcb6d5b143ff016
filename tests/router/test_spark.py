"""Batch scoring at scale: the registered router through ``mlflow.pyfunc.spark_udf`` on a real
pyspark ``local[2]`` session (Java 17), compared with ``Router.classify_batch`` on the same rows."""

from __future__ import annotations

import logging
import os
import shutil
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("mlflow")
pytest.importorskip("pyspark", reason="pyspark is not installed (pip install 'safecascade[spark]')")

from safecascade.router.cascade import Router  # noqa: E402
from safecascade.router.registry import register_router  # noqa: E402
from tests.router.registry_helpers import assert_same, bench_texts, decision_rows, frame_rows, write_router  # noqa: E402

log = logging.getLogger(__name__)
N_ROWS = 300


def _java_home() -> str | None:
    if os.environ.get("JAVA_HOME"):
        return os.environ["JAVA_HOME"]
    java = shutil.which("java")
    return str(Path(os.path.realpath(java)).parent.parent) if java else None


@pytest.fixture(scope="module")
def spark_setup(tiny_models, tmp_path_factory):
    root = tmp_path_factory.mktemp("spark")
    java_home = _java_home()
    if java_home is None:
        pytest.skip("no Java runtime (pyspark needs Java 17+)")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SAFECASCADE_HOME", str(root / "home"))
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        mp.setenv("JAVA_HOME", java_home)
        mp.setenv("PYSPARK_PYTHON", sys.executable)  # workers import the same safecascade
        mp.setenv("PYSPARK_DRIVER_PYTHON", sys.executable)
        texts = bench_texts(N_ROWS)
        cfg_path = write_router(root / "src", tiny_models, replay_texts=texts[5:60])
        info = register_router(cfg_path, promote=True)

        from pyspark.sql import SparkSession

        spark = (SparkSession.builder.master("local[2]").appName("safecascade-spark-test")
                 .config("spark.ui.enabled", "false").config("spark.sql.shuffle.partitions", "2")
                 .config("spark.driver.memory", "1g").config("spark.sql.execution.arrow.pyspark.enabled", "true")
                 .config("spark.local.dir", str(root / "spark-tmp")).getOrCreate())
        try:
            yield {"spark": spark, "texts": texts, "cfg_path": cfg_path, "info": info}
        finally:
            spark.stop()


@pytest.mark.slow
def test_spark_udf_matches_classify_batch(spark_setup, record_property):
    import mlflow.pyfunc
    import pandas as pd
    from pyspark.sql import functions as F

    spark, texts = spark_setup["spark"], spark_setup["texts"]
    uri = "models:/safecascade-router@champion"

    router = Router.load(uri)
    t0 = time.perf_counter()
    want = decision_rows(router.classify_batch(texts))
    batch_s = time.perf_counter() - t0
    router.close()

    df = spark.createDataFrame(pd.DataFrame({"id": range(len(texts)), "text": texts})).repartition(2, "id")
    score = mlflow.pyfunc.spark_udf(spark, uri, env_manager="local")  # result type: the struct of the output signature
    scored = df.withColumn("p", score("text")).select("id", "p.*")
    field_names = [f.name for f in scored.schema.fields]
    assert field_names[:6] == ["id", "action", "flagged", "score", "tier", "reason"] and "score_jailbreak" in field_names

    t0 = time.perf_counter()
    rows = sorted(scored.collect(), key=lambda r: r["id"])  # first pass: the workers load the router
    spark_first_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    rows2 = sorted(scored.collect(), key=lambda r: r["id"])  # second pass: workers reuse the loaded model
    spark_second_s = time.perf_counter() - t0

    assert len(rows) == len(texts) == N_ROWS
    # Partitions change which texts share a tier batch, so ONNX scores may differ in the last bits.
    assert_same(frame_rows([r.asDict() for r in rows]), want, tol=1e-5)
    assert_same(frame_rows([r.asDict() for r in rows2]), want, tol=1e-5)
    tiers = {w[2] for w in want}
    assert len(tiers) >= 3, f"the rows should exercise several tiers: {tiers}"

    figures = {"rows": len(texts), "classify_batch_rows_per_s": round(len(texts) / batch_s, 1),
               "spark_udf_first_pass_rows_per_s": round(len(texts) / spark_first_s, 1),
               "spark_udf_second_pass_rows_per_s": round(len(texts) / spark_second_s, 1)}
    for k, v in figures.items():
        record_property(k, v)
    log.warning("spark_udf vs classify_batch: %s", figures)
