package worker

import (
	"errors"
	"testing"

	"github.com/lavit-org/lavit/internal/wire"
)

func TestPickDevice(t *testing.T) {
	cpuOnly := []wire.Device{{Name: "cpu", Kind: "cpu"}}
	gpus := []wire.Device{{Name: "cpu", Kind: "cpu"}, {Name: "cuda:0", Kind: "cuda"}, {Name: "cuda:1", Kind: "cuda"}}
	tests := []struct {
		flag    string
		devs    []wire.Device
		want    string
		wantErr bool
	}{
		{"auto", cpuOnly, "cpu", false},
		{"", cpuOnly, "cpu", false},
		{"auto", gpus, "cuda:0", false},
		{"cpu", gpus, "cpu", false},
		{"cuda:1", gpus, "cuda:1", false},
		{"cuda:0", cpuOnly, "", true},
		{"tpu:0", gpus, "", true},
	}
	for _, tc := range tests {
		got, err := PickDevice(tc.flag, tc.devs)
		if (err != nil) != tc.wantErr || got != tc.want {
			t.Errorf("PickDevice(%q) = %q, %v; want %q (error %v)", tc.flag, got, err, tc.want, tc.wantErr)
		}
	}
}

func TestDetectDevicesHasCPU(t *testing.T) {
	devs := DetectDevices()
	if len(devs) == 0 || devs[0].Name != "cpu" {
		t.Fatalf("DetectDevices() = %+v, want the CPU first", devs)
	}
}

func TestConfigValidate(t *testing.T) {
	base := DefaultConfig()
	base.ID, base.Token, base.Host, base.Device = "w1", "tok", "h", "cpu"
	if err := base.Validate(); err != nil {
		t.Fatalf("valid config refused: %v", err)
	}
	for name, mutate := range map[string]func(*Config){
		"no id":    func(c *Config) { c.ID = "" },
		"no token": func(c *Config) { c.Token = "" },
		"no coord": func(c *Config) { c.Coord = "" },
		"zero hb":  func(c *Config) { c.HeartbeatInterval = 0 },
	} {
		c := base
		mutate(&c)
		if err := c.Validate(); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

func TestAddDeviceMemory(t *testing.T) {
	devs := func() []wire.Device {
		return []wire.Device{{Name: "cpu", Kind: "cpu", Detail: "2 cores"}, {Name: "cuda:0", Kind: "cuda", Detail: "NVIDIA H200"}, {Name: "cuda:1", Kind: "cuda"}}
	}
	mem := func(index int) (uint64, uint64, error) { return 1 << 30, uint64(index+1) * 16 << 30, nil }
	tests := []struct {
		device string
		want   []string // the three details after
	}{
		{"cuda:0", []string{"2 cores", "NVIDIA H200, 16.0 GiB", ""}},
		{"cuda:1", []string{"2 cores", "NVIDIA H200", "32.0 GiB"}},
		{"cpu", []string{"2 cores", "NVIDIA H200", ""}},
	}
	for _, tt := range tests {
		d := devs()
		AddDeviceMemory(d, tt.device, mem)
		for i, want := range tt.want {
			if d[i].Detail != want {
				t.Errorf("%s: device %s detail %q, want %q", tt.device, d[i].Name, d[i].Detail, want)
			}
			if wantBytes := uint64(0); d[i].Name == tt.device && d[i].Kind == "cuda" {
				wantBytes = uint64(i) * 16 << 30 // mem gives (N+1)·16 GiB for cuda:N, listed at N+1
				if d[i].MemoryBytes != wantBytes {
					t.Errorf("%s: memory_bytes %d, want %d", tt.device, d[i].MemoryBytes, wantBytes)
				}
			} else if d[i].MemoryBytes != 0 {
				t.Errorf("%s: device %s got memory_bytes %d, want none", tt.device, d[i].Name, d[i].MemoryBytes)
			}
		}
	}
	d := devs()
	AddDeviceMemory(d, "cuda:0", func(int) (uint64, uint64, error) { return 0, 0, errors.New("no context") })
	if d[1].Detail != "NVIDIA H200" || d[1].MemoryBytes != 0 {
		t.Errorf("an error changed the device: %+v", d[1])
	}
}

func TestThreadsEach(t *testing.T) {
	for _, tc := range []struct{ cores, workers, want int }{
		{16, 8, 2}, {16, 3, 5}, {2, 2, 1}, {2, 4, 1}, {8, 1, 8}, {8, 0, 8}, {1, 1, 1},
	} {
		if got := ThreadsEach(tc.cores, tc.workers); got != tc.want {
			t.Errorf("ThreadsEach(%d cores, %d workers) = %d, want %d", tc.cores, tc.workers, got, tc.want)
		}
	}
}
