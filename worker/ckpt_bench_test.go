package worker_test

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/lavit-org/lavit/checkpoint"
	"github.com/lavit-org/lavit/trainer"
)

// BenchmarkCheckpointTiny: the tiny stage-1 model's checkpoint: the step
// loop's stall (the rank's host copy of its part, Model.StatePart: the
// whole blocked state in a world of one), the save of the part and its
// manifest on local disk, and the restore (fetch, verify, load).
func BenchmarkCheckpointTiny(b *testing.B) {
	lib := loadLib(b)
	m, err := lib.NewModel(trainer.TinyStage1(), "cpu", 1)
	if err != nil {
		b.Fatal(err)
	}
	defer m.Close()
	ctx := context.Background()
	base := "file://" + b.TempDir()
	var stall, save, restore time.Duration
	for i := 0; i < b.N; i++ {
		t0 := time.Now()
		state, err := m.StatePart()
		if err != nil {
			b.Fatal(err)
		}
		stall += time.Since(t0)
		dir := checkpoint.Dir(base, "tiny", int64(i+1))
		t0 = time.Now()
		p, err := checkpoint.WritePartAt(ctx, dir, state, 0, 0, 1)
		if err == nil {
			parts := []checkpoint.Part{p}
			err = checkpoint.WriteManifest(ctx, dir, &checkpoint.Manifest{Format: checkpoint.FormatVersion, Run: "tiny", Step: int64(i + 1), World: 1,
				StateBytes: int64(len(state)), StateSHA256: checkpoint.PartsDigest(parts), Parts: parts})
		}
		if err != nil {
			b.Fatal(err)
		}
		save += time.Since(t0)
		t0 = time.Now()
		_, got, err := checkpoint.Load(ctx, dir)
		if err == nil {
			err = m.Load(got)
		}
		if err != nil {
			b.Fatal(err)
		}
		restore += time.Since(t0)
	}
	n := float64(b.N)
	b.ReportMetric(stall.Seconds()*1000/n, "stall_ms")
	b.ReportMetric(save.Seconds()*1000/n, "save_ms")
	b.ReportMetric(restore.Seconds()*1000/n, "restore_ms")
}

// TestExportMatchesTrainer: exporting a checkpoint's weights without the
// trainer (as lavit-coord ckpt export does, from the state blob, a blocked
// state as the workers write it, and the manifest's parameter table)
// writes the same bytes as the trainer's own safetensors export of that
// model.
func TestExportMatchesTrainer(t *testing.T) {
	lib := loadLib(t)
	for _, cfg := range []trainer.Config{trainer.TinyStage1(), trainer.TinyStage2()} {
		m, err := lib.NewModel(cfg, "cpu", 3)
		if err != nil {
			t.Fatal(err)
		}
		state, err := m.StatePart()
		if err != nil {
			t.Fatal(err)
		}
		var params []checkpoint.ParamInfo
		for _, p := range m.Info().Params {
			params = append(params, checkpoint.ParamInfo{Name: p.Name, Shape: p.Shape, Offset: p.Offset, Numel: p.Numel})
		}
		var got bytes.Buffer
		if err := checkpoint.ExportSafetensors(&got, state, checkpoint.StateFormat, params); err != nil {
			t.Fatal(err)
		}
		path := filepath.Join(t.TempDir(), "model.safetensors")
		if err := m.ExportSafetensors(path); err != nil {
			t.Fatal(err)
		}
		want, _ := os.ReadFile(path)
		m.Close()
		if !bytes.Equal(got.Bytes(), want) {
			t.Errorf("stage %d: checkpoint export (%d bytes) differs from the trainer's (%d bytes)", cfg.Stage, got.Len(), len(want))
		}
	}
}
