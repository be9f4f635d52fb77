#!/usr/bin/env bash
# Seeds the fuzz corpora (fuzz/corpus/TARGET/) from the repository's own files, so that no
# generated corpus is committed: the .ir corpus (ir/, ir/ops/, ir/passes/) for ir_parse, the
# same graphs as JSON (`gradlift dump --format json`) for json_load, checkpoints written by
# `gradlift train` on a tiny model and dataset for checkpoint_load, small IDX files (plain,
# gzipped, two gzip members) and the shipped MNIST label files for idx_read, and a few
# fixed byte strings for jit_vs_interp. Existing corpus files are kept.
#
# Usage: fuzz/seeds.sh [TARGET...]   (default: every target)
# Needs python3 and a stable Rust toolchain (builds the gradlift CLI in release mode once).
set -euo pipefail
fuzz="$(cd "$(dirname "$0")" && pwd)"
root="$(dirname "$fuzz")"
all=(ir_parse json_load checkpoint_load idx_read onnx_import jit_vs_interp)
targets=("$@")
[ ${#targets[@]} -eq 0 ] && targets=("${all[@]}")

gradlift() {
    if [ ! -x "$root/target/release/gradlift" ]; then
        (cd "$root" && cargo build --release --quiet --bin gradlift)
    fi
    "$root/target/release/gradlift" "$@"
}

ir_files() {
    ls "$root"/ir/*.ir "$root"/ir/ops/*.ir "$root"/ir/passes/*.ir
}

seed_ir_parse() {
    local out="$fuzz/corpus/ir_parse"
    mkdir -p "$out"
    for f in $(ir_files); do
        cp "$f" "$out/$(basename "$(dirname "$f")")-$(basename "$f")"
    done
}

seed_json_load() {
    local out="$fuzz/corpus/json_load"
    mkdir -p "$out"
    for f in $(ir_files); do
        local name
        name="$(basename "$(dirname "$f")")-$(basename "$f" .ir).json"
        gradlift dump "$f" --format json >"$out/$name" 2>/dev/null || rm -f "$out/$name"
    done
}

# A dataset of 2x2 images (two classes) in the MNIST layout, written by python3; each file
# gzipped, the training images as two gzip members.
tiny_mnist() {
    python3 - "$1" <<'EOF'
import gzip, struct, sys, os
d = sys.argv[1]
def idx(dims, data):
    return struct.pack(">I", 0x800 | len(dims)) + b"".join(struct.pack(">I", x) for x in dims) + bytes(data)
def gz(b):
    return gzip.compress(b, mtime=0)
n = 8
images = [(17 * i + 3 * j) % 256 for i in range(n) for j in range(4)]
labels = [i % 2 for i in range(n)]
img = idx([n, 2, 2], images)
half = len(img) // 2
open(os.path.join(d, "train-images-idx3-ubyte.gz"), "wb").write(gz(img[:half]) + gz(img[half:]))
open(os.path.join(d, "train-labels-idx1-ubyte.gz"), "wb").write(gz(idx([n], labels)))
open(os.path.join(d, "t10k-images-idx3-ubyte"), "wb").write(img)
open(os.path.join(d, "t10k-labels-idx1-ubyte"), "wb").write(idx([n], labels))
EOF
}

seed_checkpoint_load() {
    local out="$fuzz/corpus/checkpoint_load"
    mkdir -p "$out"
    local tmp
    tmp="$(mktemp -d)"
    tiny_mnist "$tmp"
    cat >"$tmp/tiny.ir" <<'EOF'
graph tiny {
inputs:
  %x: f32[4,4] = input
  %labels: i32[4] = input
params:
  %w: f32[4,2] = param glorot_uniform(seed=1)
  %b: f32[2] = param zeros
body:
  %h: f32[4,2] = matmul %x, %w
  %z: f32[4,2] = add %h, %b
  %l: f32[4] = sparse_softmax_cross_entropy %z, %labels
  %loss: f32[] = reduce_mean %l, axes=[0], keepdims=false
outputs:
  loss = %loss
}
EOF
    for run in "adam 1" "sgd 1" "adam 3"; do
        set -- $run
        gradlift train "$tmp/tiny.ir" --data "$tmp" --epochs "$2" --optimizer "$1" \
            --save "$out/tiny-$1-$2.safetensors" >/dev/null
    done
    rm -rf "$tmp"
}

seed_idx_read() {
    local out="$fuzz/corpus/idx_read"
    mkdir -p "$out"
    tiny_mnist "$out"
    cp "$root/data/mnist-subset/t10k-labels-idx1-ubyte.gz" "$out/mnist-t10k-labels.gz"
    cp "$root/data/mnist-subset/train-labels-idx1-ubyte.gz" "$out/mnist-train-labels.gz"
}

seed_onnx_import() {
    local out="$fuzz/corpus/onnx_import"
    mkdir -p "$out"
    cp "$root"/tests/onnx/*.onnx "$out/"
}

seed_jit_vs_interp() {
    local out="$fuzz/corpus/jit_vs_interp"
    mkdir -p "$out"
    python3 - "$out" <<'EOF'
import random, sys, os
r = random.Random(12)
for k in range(16):
    b = bytes(r.randrange(256) for _ in range(r.randrange(16, 200)))
    open(os.path.join(sys.argv[1], "random-%02d" % k), "wb").write(b)
EOF
}

for t in "${targets[@]}"; do
    case "$t" in
        ir_parse | json_load | checkpoint_load | idx_read | onnx_import | jit_vs_interp) "seed_$t" ;;
        *) echo "seeds.sh: unknown target $t (known: ${all[*]})" >&2; exit 2 ;;
    esac
    echo "seeded fuzz/corpus/$t: $(ls "$fuzz/corpus/$t" | wc -l) files"
done
