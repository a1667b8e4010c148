"""Put the quick reproduction check on an adapter's card (train.adapters.sample_check):

    python bench/adapter_check.py models/brats-flair-wt-0.5pct --dataset brats \
        --root ../shared/data/brats2018_sample --case Brats18_2013_3_1 --intensity mr-medsam

tests/train/test_adapters.py recomputes it and compares within 0.005.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def main(argv=None) -> int:
    from shared.fileio import atomic_write_text
    from train.adapters import CARD_FILE, load_adapter_model, sample_check

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("adapter", type=Path)
    ap.add_argument("--dataset", required=True)
    ap.add_argument("--root", required=True)
    ap.add_argument("--case", required=True)
    ap.add_argument("--every", type=int, default=4)
    ap.add_argument("--prompt", default="center")
    ap.add_argument("--intensity", default=None)
    args = ap.parse_args(argv)
    loaded = load_adapter_model(args.adapter, "lite_medsam")
    check = sample_check(loaded, args.dataset, args.root, args.case, every=args.every, prompt=args.prompt,
                         intensity=args.intensity)
    card_path = args.adapter / CARD_FILE
    card = json.loads(card_path.read_text())
    card["sample_check"] = check
    atomic_write_text(card_path, json.dumps(card, indent=2) + "\n")
    print(json.dumps(check))
    return 0


if __name__ == "__main__":
    sys.exit(main())
