package agent

// MaxWrittenBack bounds the content of each file a WaitProcessResponse
// hands back (written_back): the kubelet reads at most 4 KiB of a
// container's termination message, so the rest is cut, not refused.
const MaxWrittenBack = 4096
