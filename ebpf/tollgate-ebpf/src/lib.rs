//! Empty on purpose: the programs are in the `tollgate` binary target (`src/main.rs`), built for
//! the BPF target by `userspace/tollgate-bpf`'s build script. This library target only lets that
//! crate declare a build-dependency on this one, so cargo rebuilds the object when it changes.
#![no_std]
