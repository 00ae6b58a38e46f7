#!/usr/bin/env python3
"""Regenerates tests/runtime/conformance_allowlist.txt from a full conformance run.

    QTOOL_CONFORMANCE_ALL=1 build/tests/test_runtime --gtest_filter='OnnxBackend/*' > /tmp/conf.txt
    scripts/conformance_allowlist.py /tmp/conf.txt [--pending Op1,Op2] > tests/runtime/conformance_allowlist.txt

Every passing case is claimed, unless it uses an op listed in --pending (kernels not committed
yet). Every other case gets a comment line "# suite/case: reason"; known causes are explained
below, the rest quote the first line of the failure.
"""
import re
import sys

# Failures whose cause is a property of the test data or a deliberate choice, not a missing kernel.
KNOWN = {
    "node/test_cast_FLOAT_to_BFLOAT16": "ONNX 1.12 reference truncates float->bfloat16; qtool rounds to nearest even "
                                        "(as ONNX 1.14+ and ONNX Runtime do)",
    "node/test_castlike_BFLOAT16_to_FLOAT": "test data feeds 'like' with rank 1 where the model declares rank 2; "
                                            "qtool (like ONNX Runtime) rejects inputs of the wrong rank",
    "node/test_castlike_BFLOAT16_to_FLOAT_expanded": "same rank mismatch in the test data as the unexpanded case",
    "node/test_castlike_FLOAT_to_BFLOAT16": "same rank mismatch in the test data as test_castlike_BFLOAT16_to_FLOAT",
    "node/test_castlike_FLOAT_to_BFLOAT16_expanded": "same rank mismatch in the test data",
    "node/test_cast_FLOAT_to_STRING": "float->string formatting is not implemented (no use in quantization)",
    "node/test_castlike_FLOAT_to_STRING": "float->string formatting is not implemented",
    "node/test_castlike_FLOAT_to_STRING_expanded": "float->string formatting is not implemented",
    "node/test_identity_opt": "optional-typed input (qtool handles tensors only)",
    "node/test_identity_sequence": "sequence-typed input (qtool handles tensors only)",
    "node/test_training_dropout": "training-mode Dropout draws random masks; qtool is an inference engine",
    "node/test_training_dropout_default": "training-mode Dropout draws random masks; qtool is an inference engine",
    "node/test_training_dropout_default_mask": "training-mode Dropout draws random masks",
    "node/test_training_dropout_mask": "training-mode Dropout draws random masks",
    "node/test_batchnorm_epsilon_training_mode": "training-mode BatchNormalization (inference engine)",
    "node/test_batchnorm_example_training_mode": "training-mode BatchNormalization (inference engine)",
}


def main():
    args = sys.argv[1:]
    pending = set()
    if "--pending" in args:
        i = args.index("--pending")
        pending = set(filter(None, args[i + 1].split(",")))
        del args[i:i + 2]
    line_re = re.compile(r"^CONFORMANCE (PASS|FAIL) (\S+) ops=(\S*)(?: : (.*))?$")
    rows = []
    with open(args[0]) as f:
        for line in f:
            m = line_re.match(line.rstrip("\n"))
            if m:
                rows.append(m.groups())
    rows.sort(key=lambda r: r[1])
    claimed = sum(1 for r in rows if r[0] == "PASS" and not (set(r[2].split(",")) & pending))
    print("# ONNX backend test cases (libonnx-testdata) that qtool claims: one 'suite/case' per line.")
    print("# Unclaimed cases are commented with the reason. Regenerate with scripts/conformance_allowlist.py.")
    print(f"# {claimed} claimed of {len(rows)} cases.")
    for status, name, ops, why in rows:
        op_set = set(ops.split(","))
        if status == "PASS" and not (op_set & pending):
            print(name)
        elif status == "PASS":
            print(f"# {name}: pending: kernels for {','.join(sorted(op_set & pending))} not committed yet")
        elif name in KNOWN:
            print(f"# {name}: {KNOWN[name]}")
        else:
            m = re.search(r"no kernel for node '[^']*': op type '([^']*)'", why or "")
            if m:
                print(f"# {name}: op {m.group(1)} is not implemented")
            else:
                print(f"# {name}: fails: {(why or '')[:200]}")


if __name__ == "__main__":
    main()
