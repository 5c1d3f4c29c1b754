package shim

import (
	"context"

	taskv2 "github.com/containerd/containerd/api/runtime/task/v2"
	taskAPI "github.com/containerd/containerd/api/runtime/task/v3"
	"github.com/containerd/ttrpc"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/emptypb"
)

// registerTaskV2 serves task API v2 (containerd 1.7) from the v3 service:
// the two APIs carry the same messages, so each call converts through the
// wire format.
func registerTaskV2(server *ttrpc.Server, s *service) {
	taskv2.RegisterTTRPCTaskService(server, &taskV2{s})
}

type taskV2 struct{ s *service }

// via converts a v2 request to v3, calls the v3 method and converts the answer back.
func via[In2, In3, Out3, Out2 proto.Message](ctx context.Context, in In2, in3 In3, out2 Out2, call func(context.Context, In3) (Out3, error)) (Out2, error) {
	var zero Out2
	b, err := proto.Marshal(in)
	if err != nil {
		return zero, err
	}
	if err := proto.Unmarshal(b, in3); err != nil {
		return zero, err
	}
	out3, err := call(ctx, in3)
	if err != nil {
		return zero, err
	}
	if b, err = proto.Marshal(out3); err != nil {
		return zero, err
	}
	if err := proto.Unmarshal(b, out2); err != nil {
		return zero, err
	}
	return out2, nil
}

func (t *taskV2) State(ctx context.Context, r *taskv2.StateRequest) (*taskv2.StateResponse, error) {
	return via(ctx, r, &taskAPI.StateRequest{}, &taskv2.StateResponse{}, t.s.State)
}
func (t *taskV2) Create(ctx context.Context, r *taskv2.CreateTaskRequest) (*taskv2.CreateTaskResponse, error) {
	return via(ctx, r, &taskAPI.CreateTaskRequest{}, &taskv2.CreateTaskResponse{}, t.s.Create)
}
func (t *taskV2) Start(ctx context.Context, r *taskv2.StartRequest) (*taskv2.StartResponse, error) {
	return via(ctx, r, &taskAPI.StartRequest{}, &taskv2.StartResponse{}, t.s.Start)
}
func (t *taskV2) Delete(ctx context.Context, r *taskv2.DeleteRequest) (*taskv2.DeleteResponse, error) {
	return via(ctx, r, &taskAPI.DeleteRequest{}, &taskv2.DeleteResponse{}, t.s.Delete)
}
func (t *taskV2) Pids(ctx context.Context, r *taskv2.PidsRequest) (*taskv2.PidsResponse, error) {
	return via(ctx, r, &taskAPI.PidsRequest{}, &taskv2.PidsResponse{}, t.s.Pids)
}
func (t *taskV2) Pause(ctx context.Context, r *taskv2.PauseRequest) (*emptypb.Empty, error) {
	return via(ctx, r, &taskAPI.PauseRequest{}, &emptypb.Empty{}, t.s.Pause)
}
func (t *taskV2) Resume(ctx context.Context, r *taskv2.ResumeRequest) (*emptypb.Empty, error) {
	return via(ctx, r, &taskAPI.ResumeRequest{}, &emptypb.Empty{}, t.s.Resume)
}
func (t *taskV2) Checkpoint(ctx context.Context, r *taskv2.CheckpointTaskRequest) (*emptypb.Empty, error) {
	return via(ctx, r, &taskAPI.CheckpointTaskRequest{}, &emptypb.Empty{}, t.s.Checkpoint)
}
func (t *taskV2) Kill(ctx context.Context, r *taskv2.KillRequest) (*emptypb.Empty, error) {
	return via(ctx, r, &taskAPI.KillRequest{}, &emptypb.Empty{}, t.s.Kill)
}
func (t *taskV2) Exec(ctx context.Context, r *taskv2.ExecProcessRequest) (*emptypb.Empty, error) {
	return via(ctx, r, &taskAPI.ExecProcessRequest{}, &emptypb.Empty{}, t.s.Exec)
}
func (t *taskV2) ResizePty(ctx context.Context, r *taskv2.ResizePtyRequest) (*emptypb.Empty, error) {
	return via(ctx, r, &taskAPI.ResizePtyRequest{}, &emptypb.Empty{}, t.s.ResizePty)
}
func (t *taskV2) CloseIO(ctx context.Context, r *taskv2.CloseIORequest) (*emptypb.Empty, error) {
	return via(ctx, r, &taskAPI.CloseIORequest{}, &emptypb.Empty{}, t.s.CloseIO)
}
func (t *taskV2) Update(ctx context.Context, r *taskv2.UpdateTaskRequest) (*emptypb.Empty, error) {
	return via(ctx, r, &taskAPI.UpdateTaskRequest{}, &emptypb.Empty{}, t.s.Update)
}
func (t *taskV2) Wait(ctx context.Context, r *taskv2.WaitRequest) (*taskv2.WaitResponse, error) {
	return via(ctx, r, &taskAPI.WaitRequest{}, &taskv2.WaitResponse{}, t.s.Wait)
}
func (t *taskV2) Stats(ctx context.Context, r *taskv2.StatsRequest) (*taskv2.StatsResponse, error) {
	return via(ctx, r, &taskAPI.StatsRequest{}, &taskv2.StatsResponse{}, t.s.Stats)
}
func (t *taskV2) Connect(ctx context.Context, r *taskv2.ConnectRequest) (*taskv2.ConnectResponse, error) {
	return via(ctx, r, &taskAPI.ConnectRequest{}, &taskv2.ConnectResponse{}, t.s.Connect)
}
func (t *taskV2) Shutdown(ctx context.Context, r *taskv2.ShutdownRequest) (*emptypb.Empty, error) {
	return via(ctx, r, &taskAPI.ShutdownRequest{}, &emptypb.Empty{}, t.s.Shutdown)
}
