from lightning_aug_dpo.cli import main

if __name__ == "__main__":
    main()
