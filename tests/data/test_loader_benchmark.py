import torch
from torch.utils.data import DataLoader, TensorDataset

from reid.data import PKSampler
from reid.data.benchmark import loader_images_per_second, main


def test_timing_counts_the_timed_batches_across_epochs() -> None:
    pids = [pid for pid in range(4) for _ in range(4)]
    sampler = PKSampler(pids, p=2, k=2)  # 16 images: 4 batches of 4 an epoch
    loader = DataLoader(TensorDataset(torch.zeros(16, 3)), batch_size=4, sampler=sampler, drop_last=True)
    seen = []
    timing = loader_images_per_second(loader, batches=6, warmup=1,
                                      transform=lambda images, device: seen.append(len(images)) or images)
    assert timing.images == 24 and timing.warmup == 1 and timing.seconds > 0
    assert seen == [4] * 7 and sampler.epoch == 2  # 7 batches: into the second epoch
    assert timing.images_per_second == timing.images / timing.seconds


def test_cli_times_the_training_loader_of_a_config(data_dir, capsys) -> None:
    main(["--batches", "2", "--warmup", "1", "experiment=smoke", f"data_dir={data_dir}", "data.pipeline=gpu"])
    out = capsys.readouterr().out
    assert "train images at 64x32, batch 16, data.num_workers=0, data.pipeline=gpu, data.cache=none" in out
    assert "images/s over 2 batches after 1 (32 images in " in out
