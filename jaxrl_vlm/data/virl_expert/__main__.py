"""Command line: build V-IRL expert SFT data (see `main`)."""
from jaxrl_vlm.data.virl_expert.builder import build_expert_dataset


def main(argv: list[str] | None = None) -> None:
    """`python -m jaxrl_vlm.data.virl_expert --data-dir D --route-dir R --config l|vl --episodes N --seed S`."""
    import argparse

    parser = argparse.ArgumentParser(description="Build V-IRL expert SFT data (TFDS array_record).")
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--route-dir", required=True, help="V-IRL route directory (route_infos.json, ...)")
    parser.add_argument("--config", choices=("l", "vl"), default="l")
    parser.add_argument("--episodes", type=int, required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--relative", action="store_true", help="relative turn labels (rule-OOD action space)")
    parser.add_argument("--view-size", type=int, default=640)
    parser.add_argument("--resolution", type=int, default=1200)
    args = parser.parse_args(argv)
    builder = build_expert_dataset(args.data_dir, args.config, args.route_dir, args.episodes, args.seed,
                                   absolute_action=not args.relative, view_size=args.view_size,
                                   resolution=args.resolution)
    print(f"{builder.info.splits['train'].num_examples} examples in {builder.data_dir}")


if __name__ == "__main__":
    main()
