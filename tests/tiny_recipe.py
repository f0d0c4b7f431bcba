"""A recipe small enough for a whole `prunelab run` in seconds (the CIFAR-10 fixtures' images):
tests of the run machinery share it. {lr} is the fine-tune's learning rate."""

TINY_RECIPE = """
name = "steps"
seed = 0

[model]
name = "vgg"
width = 0.125

[data]
val_size = 64
train_subset = 256
test_subset = 64

[dense.train]
epochs = 1
batch_size = 64

[prune]
sparsities = [0.5]

[[finetune]]
name = "sgd"
optimizer = "sgd"
lr = {lr}
schedule = "cosine"
epochs = 1
batch_size = 64
"""
