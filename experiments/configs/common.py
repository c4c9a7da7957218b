"""The fields every Omniglot experiment config has (see omniglot_short.py for the run command)."""

import ml_collections

ALL_METHODS = "maml,fomaml,reptile,metasgd,transfer,scratch"


def base_config() -> ml_collections.ConfigDict:
  """Defaults shared by the short, full and tiny configs."""
  c = ml_collections.ConfigDict()
  c.name = "omniglot"
  c.dataset = "omniglot"  # offline Omniglot if found, else TFDS (see docs/howto/data.md)
  c.data_dir = ""  # "" = found automatically (METAGAN_OMNIGLOT28_DIR, ../shared/...)
  # Gaussian blur (pixels) of every image, train and test alike (support, held-out
  # reference, feature net): it softens Omniglot's 1-pixel binary strokes.
  c.blur = 0.0
  c.methods = ALL_METHODS  # comma-separated: meta methods, "transfer", "scratch"
  c.meta_seeds = "0,1,2"  # meta-training seeds (one run folder each)

  # The GAN pair (metagan_jax.models.get_model(model, **model_kw)) and its loss.
  c.model = "fsgan28"
  c.model_kw = ml_collections.ConfigDict()
  c.loss = "wgan-gp"  # Wasserstein + gradient penalty 10 (FIGR's loss)
  # The adaptation rule: how every method adapts to a task, in meta-training's inner
  # loop and (unless tuned, see eval.tune_*) at test time. Meta-SGD uses its
  # meta-learned per-parameter rates instead of inner_opt / inner_lr.
  c.inner_steps = 10  # inner steps during meta-training
  c.d_steps = 2  # D updates per inner step
  c.g_steps = 1
  c.inner_opt = "adam"  # sgd | adam
  c.inner_lr = 1e-3
  c.inner_b1 = 0.0  # Adam's betas (inner_opt = adam)
  c.inner_b2 = 0.9
  # Meta-SGD's step: "sgd" (-lr * grad, Li et al.) or "adam" (-lr * Adam's direction with the
  # betas above: with every rate at inner_lr, the adam rule exactly). Through WGAN-GP, "sgd"
  # diverged in meta-training (docs/research_log.md, research log 13).
  c.metasgd_direction = "adam"
  # maml / metasgd meta-training: second order through the last n inner steps only
  # ("all": exact; metagan_jax.AdaptConfig.second_order_steps)
  c.second_order_steps = "all"
  c.g_trainable = "all"  # which G parameters adapt: all | none | path prefixes
  c.d_trainable = "all"
  c.augment = ""  # DiffAugment of D's inputs in the inner loop: "translation,cutout"
  c.n_fake = 0  # generated samples per inner update (0: K); a multiple of K
  # repeats the support to match (research log 20)

  # Where meta-training starts: "random" (model.init) or "pretrained" (the GAN of
  # the pretrain stage below, which is also what the transfer baseline adapts).
  c.init = "pretrained"
  c.pretrain = ml_collections.ConfigDict()
  c.pretrain.per_seed = True  # one pre-trained GAN per meta seed (False: one per run)
  c.pretrain.steps = 2000
  c.pretrain.batch = 64
  c.pretrain.lr = 1e-4  # Adam, D and G (the main job and the full protocol: 8e-4, log 26)
  c.pretrain.b1 = 0.0
  c.pretrain.b2 = 0.9
  c.pretrain.d_steps = 2
  c.pretrain.ema = 0.999  # the EMA generator is what adapts and what is sampled
  c.pretrain.augment = ""  # DiffAugment of D's inputs in pre-training (metagan_jax.augment)

  c.train = ml_collections.ConfigDict()
  c.train.steps = 2000  # meta-steps (transfer: the same number of "steps", see README)
  c.train.tasks = 8  # T tasks per meta-step
  c.train.k = 4  # support images per task (= eval.k)
  c.train.q = 4  # query images per task
  c.train.outer_lr = 1e-3  # Adam, all meta methods
  c.train.outer_b1 = 0.9
  # Meta methods that also get a row at the reference's meta-training time (e.g. "maml,metasgd"
  # -> rows maml@time, metasgd@time): their parameters after as many meta-steps as fit in
  # equal_time_of's steps x its median ms per step, measured in the same run (train_lib.train_run).
  c.train.equal_time = ""
  c.train.equal_time_of = "reptile"
  # Meta-SGD's learned rates: their own outer Adam learning rate (0 = train.outer_lr). They
  # start at inner_lr = 1e-3, so outer_lr = 1e-3 moved them ~100% per step and meta-training
  # diverged at step 11; 1e-5 (~1% per step) stayed finite (docs/research_log.md, log 13).
  c.train.rate_lr = 1e-5
  c.train.outer_eps = 1e-8  # Adam's epsilon (larger: tiny gradients move less than outer_lr)
  c.train.ckpt_every = 200
  c.train.keep_checkpoints = 3
  c.train.log_every = 10
  c.train.sample_every = 500
  c.train.sample_streams = 0  # task-sampling streams (0 = one per process; see omniglot.py)
  c.train.max_nonfinite = 20  # stop after this many non-finite updates in a row
  c.train.step_sleep = 0.0  # testing only: seconds to sleep per step (kill/resume test)
  c.train.inject_nan_steps = ""  # testing only: comma-separated steps whose data is made NaN

  c.features = ml_collections.ConfigDict()
  c.features.steps = 3000
  c.features.batch = 64
  c.features.lr = 1e-3
  c.features.dim = 64
  c.features.holdout = 4  # images per meta-training class kept for its accuracy
  c.features.seed = 0
  c.features.cache_dir = "runs/cache"

  c.eval = ml_collections.ConfigDict()
  c.eval.num_classes = 20  # the first n of experiments/omniglot_test_classes.json
  c.eval.k = 4  # support images; the other images of a class are the reference
  c.eval.steps = "0,5,10,25,50"  # adaptation steps T
  c.eval.headline = 10
  c.eval.adapt_seeds = "0,1"
  c.eval.n_gen = 64  # generated samples per class
  c.eval.n_aug = 64  # generated samples per class added in the low-data test
  c.eval.classifier_steps = 300
  # The anchors' low-data protocol (lowdata_cnn_acc): a CNN trained from scratch on the K
  # real images (+ n_aug generated) with random shifts of up to cnn_shift x 28 px; 0 steps: off
  c.eval.cnn_steps = 300
  c.eval.cnn_batch = 64
  c.eval.cnn_lr = 1e-3
  c.eval.cnn_shift = 0.075  # 2 px at 28 x 28
  c.eval.n_boot = 2000
  c.eval.grid_classes = 6
  c.eval.split_seed = 0
  # Test-time rule tuning, the same grid for every method: each (method, seed) adapts
  # with every combination below on eval.tune_classes classes of the validation
  # alphabets (T = headline); each method keeps the rule with the lowest validation
  # KID averaged over its seeds, for all its seeds. Empty = no tuning (the rule
  # above). Meta-SGD's grid multiplies its learned rates instead.
  c.eval.tune_lrs = ""  # e.g. "0.0003,0.001,0.003"
  c.eval.tune_g_trainable = ""  # e.g. "all;mapping" (';'-separated: prefixes use ',')
  c.eval.tune_d_trainable = ""  # e.g. "all;conv3,fc" (FreezeD: conv1, conv2 fixed at test time)
  c.eval.tune_psi = ""  # e.g. "1,0.8,0.6,0.4": sampling truncation (research log 22)
  c.eval.tune_classes = 20
  return c


def voices_config() -> ml_collections.ConfigDict:
  """The voices experiments' defaults: FSDD as log-mel spectrograms, the specgan pair.

  A class is one speaker saying one digit and a group is a speaker; ``fold`` f
  tests FSDD's f-th speaker (sorted names), validates on the next and
  meta-trains on the other four. The GAN recipe is the Omniglot main job's.
  """
  c = base_config()
  c.name = "voices"
  c.dataset = "fsdd"  # the FSDD folder (METAGAN_FSDD_DIR, ../shared/data/fsdd) or tfds:spoken_digit
  c.fold = 0
  c.spec = ml_collections.ConfigDict(mg_audio_spec_defaults())
  c.model = "specgan"
  c.model_kw = ml_collections.ConfigDict({"n_mels": c.spec.n_mels, "frames": c.spec.frames})
  c.methods = "reptile,transfer"
  c.pretrain.per_seed = False
  c.pretrain.steps = 1000
  c.pretrain.lr = 8e-4
  c.pretrain.batch = 40  # batches of distinct classes: the 4 training speakers' 40
  # more training voices: the training speakers' clips played faster or slower by these
  # semitones, as extra classes (mg.data.audio.shift_voices); "" = none
  c.voice_shifts = ""
  c.train.steps = 200
  c.train.tasks = 4
  c.train.outer_b1 = 0.0
  # The judges (experiments/protocol/oracles.py): speaker and digit CNNs on recordings 0-24
  c.oracles = ml_collections.ConfigDict()
  c.oracles.steps = 1500
  c.oracles.batch = 32  # 1,500 steps of 32: 86 s alone on a Zen 4 (64: 167 s; research log 34)
  c.oracles.lr = 1e-3
  c.oracles.dim = 64
  c.oracles.shift = 2  # random shifts in time of up to 2 frames (48 ms)
  c.oracles.gl_iters = 64  # Griffin-Lim iterations of every inverted clip
  c.oracles.seed = 0
  c.oracles.clips_per_class = 0  # 0: all 25 of each role (the tests keep fewer)
  c.oracles.cache_dir = "runs/cache"
  c.folds = "0,2,4"  # the folds a run trains and scores (each its own run folder)
  c.eval.steps = "0,10"
  c.eval.n_gen = 32  # generated clips per class
  c.eval.tune_lrs = "0.001,0.003"
  c.eval.tune_psi = ""  # (no truncation grid: each rule costs a Griffin-Lim pass per class)
  c.eval.headline_method = ""  # "": the meta method with the best validation voice margin
  c.eval.split = "test"  # the speaker the rows score; "val" for pilots (no test speaker read)
  return c


def mg_audio_spec_defaults() -> dict:
  """``metagan_jax.audio.SpecConfig()``'s fields (64 mel bins x 32 frames at 8 kHz)."""
  from metagan_jax.audio import SpecConfig  # pylint: disable=g-import-not-at-top

  return SpecConfig().to_dict()
