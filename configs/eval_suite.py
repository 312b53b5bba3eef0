"""The paper's evaluation suite as ``config.eval`` entries.

    python -m cvlg_jax.evaluate --config=configs/cc3m.py:data_dir=D,vocab=V,evals=paper,eval_data_dir=TFDS_DIR \
        --workdir=WORKDIR

14 zero-shot classification sets, linear probes on the same sets, the ImageNet
distribution shifts (V2, Sketch, R, A, ObjectNet) and COCO / Flickr30k
retrieval. Sets that are not prepared under ``eval_data_dir`` are reported as
skipped with what to download; they never stop the suite.
"""

ZEROSHOT_SETS = ("imagenet", "cifar10", "cifar100", "caltech101", "food101",
                 "flowers102", "pets", "cars", "fgvc_aircraft", "dtd", "sun397",
                 "stl10", "eurosat", "resisc45")
SHIFT_SETS = ("imagenet_v2", "imagenet_sketch", "imagenet_r", "imagenet_a",
              "objectnet")
RETRIEVAL_SETS = ("coco", "flickr30k")


def during_training(data_dir=None):
  """Cheap entries worth running every epoch of pre-training."""
  return {
      "zs_imagenet": dict(type="zeroshot", dataset="imagenet", data_dir=data_dir,
                          max_examples=10_000),
      "zs_cifar10": dict(type="zeroshot", dataset="cifar10", data_dir=data_dir),
      "ret_coco": dict(type="retrieval", dataset="coco", data_dir=data_dir),
  }


def paper_suite(data_dir=None, probe_max_train=None):
  """Every benchmark of the paper: zero-shot, linear probe, shifts, retrieval."""
  entries = {}
  for name in ZEROSHOT_SETS + SHIFT_SETS:
    entries[f"zs_{name}"] = dict(type="zeroshot", dataset=name, data_dir=data_dir)
  for name in ZEROSHOT_SETS:
    entries[f"probe_{name}"] = dict(type="linear_probe", dataset=name,
                                    data_dir=data_dir,
                                    max_train_examples=probe_max_train)
  for name in RETRIEVAL_SETS:
    entries[f"ret_{name}"] = dict(type="retrieval", dataset=name, data_dir=data_dir)
  return entries


def add_to(config, args) -> None:
  """The suite a config arg asks for (``evals=paper`` or the cheap
  during-training set; ``eval_data_dir``) as ``config.eval`` entries."""
  data_dir = args.get("eval_data_dir") or None
  suite = (paper_suite(data_dir) if args.get("evals") == "paper"
           else during_training(data_dir))
  for name, entry in suite.items():
    config.eval[name] = entry
