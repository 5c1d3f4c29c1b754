package agent

// The dm-verity parameters of every image layer (see the Layer message):
// what the host's conversion writes and the agent's verity table reads.
const (
	VerityBlockSize = 4096
	VerityAlgorithm = "sha256"
	// VeritySaltHex is the salt: 32 zero bytes, as hcsshim's dmverity
	// package (our converter) hashes with.
	VeritySaltHex = "0000000000000000000000000000000000000000000000000000000000000000"
)
