"""The bank teacher inside the train step and the loop: example ids from the
pipeline, mesh independence, and bitwise resume with the bank checkpointed."""

import json
import os

import jax
import numpy as np
import pytest
from ml_collections import ConfigDict

from cvlg_jax.step import sharding, train_state, train_step
from cvlg_jax.data import pipeline

from main_runner import (assert_bitwise_equal, final_state, make_main_runner,
                         metric_rows)

from configs import demo
from train_fixtures import plan_of

# 40 examples, batch 16: the bank fills within 3 steps and every later batch
# mixes fresh and stale entries (and some batches span two epochs).
BANK_FLAGS = ("--config.loss.psd.teacher=bank", "--config.data.num_train=40",
              "--config.train.batch_size=16")


def _config():
  c = demo.get_config("tiny,schedule=paper")  # half the batch distilled
  c.eval = {}
  c.data.image_size, c.data.context_length, c.data.num_train = 16, 8, 40
  c.train.batch_size = 16
  c.optim.warmup_steps = 0
  c.loss.psd.teacher, c.loss.psd.ramp_steps = "bank", 2  # alpha at full soon
  return c


def test_pipeline_example_ids_are_source_indices_every_epoch():
  c = _config()
  tokenizer = train_state.build(plan_of(c))[0]
  it = iter(pipeline.train_dataset(c, tokenizer))
  ids = np.concatenate([next(it)["example_id"] for _ in range(5)])  # 2 epochs
  assert ids.dtype == np.int32
  np.testing.assert_array_equal(np.sort(ids[:40]), np.arange(40))
  np.testing.assert_array_equal(np.sort(ids[40:80]), np.arange(40))
  assert not np.array_equal(ids[:40], ids[40:80])  # reshuffled, same examples
  # The id names the example: its image is the source's image of that index.
  source = pipeline.train_source(c)
  batch = next(it)
  for i in (0, 7):
    np.testing.assert_array_equal(batch["image"][i],
                                  source[int(batch["example_id"][i])]["image"])


def _run_steps(config, data, fsdp, batches):
  mesh = sharding.make_mesh(ConfigDict(dict(data=data, fsdp=fsdp)))
  _, model, tx, schedule = train_state.build(plan_of(config))
  state, shardings = train_state.init_state(plan_of(config), model, tx, mesh)
  assert state.bank.image.sharding.spec == sharding.batch_sharding(mesh).spec
  step = train_step.make_train_step(plan_of(config), model, tx, schedule, mesh, shardings)
  metrics = []
  for batch in batches:
    state, m = step(state, sharding.shard_batch(batch, mesh))
    metrics.append(jax.device_get(m))
  return jax.device_get(state), metrics


def test_bank_step_is_mesh_independent_and_distils_once_filled():
  c = _config()
  tokenizer = train_state.build(plan_of(c))[0]
  it = iter(pipeline.train_dataset(c, tokenizer))
  batches = [next(it) for _ in range(6)]
  state_a, metrics_a = _run_steps(c, 8, 1, batches)
  state_b, metrics_b = _run_steps(c, 4, 2, batches)
  for ma, mb in zip(metrics_a, metrics_b):
    for key in ma:
      np.testing.assert_allclose(mb[key], ma[key], rtol=2e-4, atol=1e-6,
                                 err_msg=key)
  np.testing.assert_array_equal(state_b.bank.seen_step, state_a.bank.seen_step)
  as_float = lambda bits: np.asarray(jax.lax.bitcast_convert_type(  # noqa: E731
      bits, jax.numpy.bfloat16), np.float32)
  np.testing.assert_allclose(as_float(state_b.bank.image),
                             as_float(state_a.bank.image),
                             rtol=0, atol=2e-2)  # bf16 storage of close values
  # Step 1 sees an empty bank: nothing distilled, every row falls back.
  assert metrics_a[0]["bank_unseen"] == 1.0 and metrics_a[0]["distilled"] == 0
  # Once the 40 examples have all been seen, every row has a teacher, and
  # half of them (psd.subset_fraction) are distilled.
  assert metrics_a[-1]["bank_unseen"] == 0.0
  np.testing.assert_allclose(metrics_a[-1]["distilled"], 0.5)
  assert 0 < metrics_a[-1]["positive_mass"] < 1
  # Every example stored, each by the last step that saw it.
  ids = np.concatenate([b["example_id"] for b in batches])
  last = {int(i): s + 1 for s, b in enumerate(batches) for i in b["example_id"]}
  assert set(ids) == set(range(40))
  for i, step in last.items():
    assert state_a.bank.seen_step[i] == step
  assert (state_a.bank.seen_step[40:] == 0).all()  # padding rows, never written


def test_the_step_updates_the_bank_in_place():
  """The step donates the state and scatters into the bank's own buffers: its
  temporaries stay far below one device's share of the bank (compiled with the
  read inside, XLA would copy the whole bank; see train_step)."""
  c = _config()
  c.data.num_train = 4_000_000  # bank share: 500k rows x (2 x 64 x 2 + 4) B = 130 MB
  mesh = sharding.make_mesh(ConfigDict(dict(data=8, fsdp=1)))
  _, model, tx, schedule = train_state.build(plan_of(c))
  abstract = jax.eval_shape(lambda: train_state.init_state(plan_of(c), model, tx, mesh)[0])
  shardings = sharding.state_shardings(mesh, abstract)
  step = train_step.make_train_step(plan_of(c), model, tx, schedule, mesh, shardings)
  rows = sharding.batch_sharding(mesh)
  put = lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=rows)  # noqa: E731
  b, s, n = c.train.batch_size, c.data.image_size, c.data.context_length
  batch = dict(image=put(np.zeros((b, s, s, 3), np.uint8)),
               tokens=put(np.zeros((b, n), np.int32)),
               example_id=put(np.zeros((b,), np.int32)))
  bank_rows = jax.eval_shape(step.read_bank, abstract.bank, batch["example_id"])
  state = jax.tree.map(lambda x, sh: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sh),
                       abstract, shardings)
  memory = step.update.lower(state, batch, jax.tree.map(put, bank_rows)).compile(
      ).memory_analysis()
  share = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(abstract.bank)) / 8
  assert memory.temp_size_in_bytes < 0.25 * share, (memory.temp_size_in_bytes, share)


@pytest.fixture(scope="module")
def run_main(tmp_path_factory):
  return make_main_runner(tmp_path_factory.mktemp("bank_resume"))


def test_sigterm_resume_with_bank_is_bitwise_identical(run_main, tmp_path):
  """The bank is part of the checkpointed state: a run stopped at step 7 and
  resumed ends bitwise equal to an uninterrupted one, bank included."""
  ref = tmp_path / "uninterrupted"
  out = run_main(ref, *BANK_FLAGS)
  assert out.returncode == 0, out.stderr[-3000:]
  ref_state = final_state(ref)
  assert (ref_state["['bank']['seen_step']"] > 0).sum() == 40
  rows = metric_rows(ref)
  assert all(r["bank_unseen"] == 0.0 and r["distilled"] > 0 for r in rows)

  run = tmp_path / "interrupted"
  first = run_main(run, *BANK_FLAGS, "--fault_signal_at_step=7")
  assert first.returncode == 0, first.stderr[-3000:]
  second = run_main(run, *BANK_FLAGS)
  assert second.returncode == 0, second.stderr[-3000:]
  assert "Resumed from checkpoint at step 7." in second.stderr
  assert metric_rows(run) == rows
  assert_bitwise_equal(final_state(run), ref_state)
  with open(os.path.join(run, "config.json")) as f:
    assert json.load(f)["loss"]["psd"]["teacher"] == "bank"


def _ids_name_their_examples(config, source_len, caption_of):
  """Two epochs of batches: ids cover the source once per epoch, and each
  id's tokens are those of that source record's caption."""
  tokenizer = train_state.build(plan_of(config))[0]
  it = iter(pipeline.train_dataset(config, tokenizer))
  per_epoch = source_len // config.train.batch_size * config.train.batch_size
  batches = [next(it) for _ in range(2 * source_len // config.train.batch_size)]
  ids = np.concatenate([b["example_id"] for b in batches])
  assert ids.dtype == np.int32 and ((ids >= 0) & (ids < source_len)).all()
  assert len(set(ids[:per_epoch])) == per_epoch  # no repeats within an epoch
  b = batches[-1]
  for row in range(3):
    want = tokenizer(caption_of(int(b["example_id"][row])))
    assert any((b["tokens"][row] == w).all() for w in want)


def test_real_sources_carry_example_ids(tmp_path):
  """ArrayRecord (and the converter's row ids), TFDS and class-folder sources."""
  from cvlg_jax.data import convert, decode, sources
  from image_fixtures import encode_image
  tfds = pytest.importorskip("tensorflow_datasets")
  rng = np.random.default_rng(0)
  src = tmp_path / "images"
  src.mkdir()
  for i in range(20):
    (src / f"{i:02d}.jpg").write_bytes(encode_image(
        rng.integers(0, 256, (24, 24, 3), dtype=np.uint8), "JPEG"))
    (src / f"{i:02d}.txt").write_text(f"caption number {i}")
  (src / "05.jpg").write_bytes(b"broken")  # skipped: row 5 has no record
  convert.main(["--input_format=folder", f"--input={src}", "--num_workers=1",
                f"--output_dir={tmp_path / 'shards'}", "--num_shards=3"])
  shards = sources.ArrayRecordImageText(str(tmp_path / "shards"))
  assert len(shards) == 19
  row_ids = [shards[i]["id"] for i in range(19)]  # input row numbers
  assert row_ids == [i for i in range(20) if i != 5]
  assert all(shards[i]["caption"] == f"caption number {row_ids[i]}"
             for i in range(19))

  c = _config()
  c.data.source, c.data.data_dir, c.train.batch_size = "arrayrecord", str(
      tmp_path / "shards"), 8
  _ids_name_their_examples(c, 19, lambda i: [shards[i]["caption"]])

  c = _config()
  c.data.source, c.data.tfds_name, c.train.batch_size = "tfds", "laion400m/images", 8
  with tfds.testing.mock_data(num_examples=16,
                              policy=tfds.testing.MockPolicy.USE_CODE):
    text = pipeline.train_source(c)
    _ids_name_their_examples(c, 16, lambda i: decode.caption_candidates(
        text[i]["caption"]))

  folder = tmp_path / "classes"
  for name in ("cat", "dog"):
    for split in ("train", "test"):
      (folder / split / name).mkdir(parents=True)
      for i in range(8):
        (folder / split / name / f"{i}.png").write_bytes(encode_image(
            rng.integers(0, 256, (12, 12, 3), dtype=np.uint8), "PNG"))
  c = _config()
  c.data.source, c.data.tfds_name = "tfds_class_captions", f"folder:{folder}"
  c.data.caption_noise, c.train.batch_size = 0.5, 8
  classes = pipeline.train_source(c)
  _ids_name_their_examples(c, 16, lambda i: classes[i]["caption"])
