package agent

import "crypto/sha512"

// HostReportDataPrefix separates the reports the host asks for (GetReport)
// from those the pod's own containers ask for through the agent's
// attestation endpoint, which carry the container's nonce verbatim: a host
// report's REPORT_DATA is HostReportData of the host's nonce, a hash the
// host cannot steer to a value a workload protocol gives meaning to (a key
// hash, a workload's nonce).
const HostReportDataPrefix = "contrast.v1.GetReport.host-nonce\x00"

// HostReportData is the REPORT_DATA of a report the host asks for with
// nonce: SHA-512 of HostReportDataPrefix followed by the nonce.
func HostReportData(nonce []byte) [64]byte {
	h := sha512.New()
	h.Write([]byte(HostReportDataPrefix))
	h.Write(nonce)
	var out [64]byte
	h.Sum(out[:0])
	return out
}
