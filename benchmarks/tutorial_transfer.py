"""PyTorch's transfer-learning tutorial, as users write it (https://pytorch.org/tutorials/beginner/
transfer_learning_tutorial.html), run on its own ants/bees photos with the only ImageNet weights on this
machine (timm's tf_efficientnet_lite0 from ../shared/data) in place of torchvision's resnet18 download.

    python -m benchmarks.tutorial_transfer --mode fixed|finetune --root DATA --weights FILE --epochs 25

Prints one JSON line per epoch: {"epoch", "val_acc", "seconds"} (seconds since the process started).
"""

from __future__ import annotations

import time

# the clock starts with the process, as a user's `python train.py` would
T0 = time.perf_counter()  # noqa: E402

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402

import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
import torch.optim as optim  # noqa: E402
from torch.optim import lr_scheduler  # noqa: E402
from torchvision import datasets, transforms  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--mode", choices=["fixed", "finetune"], required=True)
    p.add_argument("--root", required=True)
    p.add_argument("--weights", required=True)
    p.add_argument("--epochs", type=int, default=25)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    torch.manual_seed(args.seed)

    # the tutorial's transforms, verbatim
    data_transforms = {
        "train": transforms.Compose(
            [
                transforms.RandomResizedCrop(224),
                transforms.RandomHorizontalFlip(),
                transforms.ToTensor(),
                transforms.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]),
            ]
        ),
        "val": transforms.Compose(
            [
                transforms.Resize(256),
                transforms.CenterCrop(224),
                transforms.ToTensor(),
                transforms.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]),
            ]
        ),
    }
    image_datasets = {
        x: datasets.ImageFolder(os.path.join(args.root, x), data_transforms[x]) for x in ["train", "val"]
    }
    dataloaders = {
        x: torch.utils.data.DataLoader(image_datasets[x], batch_size=4, shuffle=True, num_workers=4)
        for x in ["train", "val"]
    }
    dataset_sizes = {x: len(image_datasets[x]) for x in ["train", "val"]}

    import timm
    from safetensors.torch import load_file

    device = torch.device("cuda:0" if torch.cuda.is_available() else "cpu")  # as the tutorial does
    model = timm.create_model("tf_efficientnet_lite0")
    model.load_state_dict(load_file(args.weights))
    if args.mode == "fixed":  # "ConvNet as fixed feature extractor": freeze all but the new final layer
        for param in model.parameters():
            param.requires_grad = False
    model.classifier = nn.Linear(model.classifier.in_features, 2)  # new layers require grad by default
    model = model.to(device)
    criterion = nn.CrossEntropyLoss()
    params = model.classifier.parameters() if args.mode == "fixed" else model.parameters()
    optimizer = optim.SGD(params, lr=0.001, momentum=0.9)
    scheduler = lr_scheduler.StepLR(optimizer, step_size=7, gamma=0.1)

    for epoch in range(args.epochs):  # train_model(), as in the tutorial
        for phase in ["train", "val"]:
            model.train() if phase == "train" else model.eval()
            running_corrects = 0
            for inputs, labels in dataloaders[phase]:
                inputs, labels = inputs.to(device), labels.to(device)
                optimizer.zero_grad()
                with torch.set_grad_enabled(phase == "train"):
                    outputs = model(inputs)
                    _, preds = torch.max(outputs, 1)
                    loss = criterion(outputs, labels)
                    if phase == "train":
                        loss.backward()
                        optimizer.step()
                running_corrects += torch.sum(preds == labels.data)
            if phase == "train":
                scheduler.step()
            else:
                acc = running_corrects.double() / dataset_sizes[phase]
                print(
                    json.dumps(
                        {
                            "epoch": epoch + 1,
                            "val_acc": round(float(acc), 4),
                            "seconds": round(time.perf_counter() - T0, 2),
                        }
                    ),
                    flush=True,
                )


if __name__ == "__main__":
    main()
