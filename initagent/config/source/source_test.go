package source

import (
	"bytes"
	"encoding/binary"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// corruptFAT zeroes every FAT of a FAT12/16 image, so that no cluster chain
// can be followed while the label stays readable.
func corruptFAT(t *testing.T, img string) {
	t.Helper()
	f, err := os.OpenFile(img, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	bs := make([]byte, 512)
	if _, err := f.ReadAt(bs, 0); err != nil {
		t.Fatal(err)
	}
	bps := int64(binary.LittleEndian.Uint16(bs[11:]))
	reserved := int64(binary.LittleEndian.Uint16(bs[14:]))
	fatSize := int64(binary.LittleEndian.Uint16(bs[22:]))
	if _, err := f.WriteAt(make([]byte, int64(bs[16])*fatSize*bps), reserved*bps); err != nil {
		t.Fatal(err)
	}
}

func TestFetchPrecedence(t *testing.T) {
	cmdDoc, driveDoc, embDoc := []byte("from: cmdline\n"), []byte("from: drive\n"), []byte("from: embedded\n")
	srv, _ := configServer(t, false, cmdDoc, nil)
	okURL, badURL := srv.URL+"/mc.yaml", srv.URL+"/typo.yaml"
	drive := func(t *testing.T) string { return makeFAT(t, "CIDATA", 0, 2, map[string][]byte{"user-data": driveDoc}) }
	emptyDrive := func(t *testing.T) string {
		return makeFAT(t, "CIDATA", 0, 2, map[string][]byte{"meta-data": []byte("x")})
	}
	brokenDrive := func(t *testing.T) string {
		img := drive(t)
		corruptFAT(t, img)
		return img
	}

	for _, tc := range []struct {
		name     string
		url      string
		drive    func(t *testing.T) string
		embedded []byte // written at EmbeddedPath unless nil
		embDir   bool   // EmbeddedPath is a directory
		want     []byte
		wantSrc  string
		wantErr  error
		errText  []string
	}{
		{name: "nothing", wantErr: ErrNoConfig},
		{name: "embedded only", embedded: embDoc, want: embDoc, wantSrc: "embedded:" + EmbeddedPath},
		{name: "empty embedded counts as none", embedded: []byte{}, wantErr: ErrNoConfig},
		{name: "cmdline first", url: okURL, drive: drive, embedded: embDoc, want: cmdDoc, wantSrc: "cmdline:" + okURL},
		{name: "drive before embedded", drive: drive, embedded: embDoc, want: driveDoc, wantSrc: "config-drive:"},
		{name: "drive without a config passes on", drive: emptyDrive, embedded: embDoc, want: embDoc, wantSrc: "embedded:"},
		{name: "failing cmdline stops the search", url: badURL, drive: drive, embedded: embDoc,
			errText: []string{"config source cmdline ballast.config=" + badURL, "404"}},
		{name: "broken drive stops the search", drive: brokenDrive, embedded: embDoc,
			errText: []string{"config source config drive", `label "CIDATA"`, "invalid cluster", "fix or detach the drive"}},
		{name: "embedded too large", embedded: bytes.Repeat([]byte("a"), MaxSize+1), wantErr: ErrTooLarge,
			errText: []string{"embedded machine config", "4 MiB", "imgbuild --config"}},
		{name: "embedded unreadable", embDir: true, errText: []string{"embedded machine config", "is a directory"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			root := t.TempDir()
			if tc.embedded != nil {
				writeTree(t, root, map[string][]byte{EmbeddedPath: tc.embedded})
			}
			if tc.embDir {
				if err := os.MkdirAll(filepath.Join(root, EmbeddedPath), 0o755); err != nil {
					t.Fatal(err)
				}
			}
			o := Options{Root: root, Devices: []string{}, Cmdline: map[string]string{}}
			if tc.url != "" {
				o.Cmdline[KeyURL] = tc.url
			}
			if tc.drive != nil {
				o.Devices = []string{tc.drive(t)}
			}
			var log bytes.Buffer
			o.Log = slog.New(slog.NewTextHandler(&log, nil))
			res, err := Fetch(t.Context(), o)
			t.Logf("Fetch = %+v, %v\nlog:\n%s", res, err, log.String())
			if tc.want != nil {
				if err != nil {
					t.Fatal(err)
				}
				if !bytes.Equal(res.Data, tc.want) || !strings.HasPrefix(res.Source, tc.wantSrc) || res.SHA256 != sha(tc.want) {
					t.Errorf("Fetch = %q from %q (sha256 %s), want %q from %s…", res.Data, res.Source, res.SHA256, tc.want, tc.wantSrc)
				}
				// The chosen source and its hash are logged.
				if !strings.Contains(log.String(), "sha256="+res.SHA256) || !strings.Contains(log.String(), res.Source) {
					t.Errorf("log does not name the source and its sha256:\n%s", log.String())
				}
				return
			}
			if err == nil {
				t.Fatalf("Fetch = %q from %s, want an error", res.Data, res.Source)
			}
			if tc.wantErr != nil && !errors.Is(err, tc.wantErr) {
				t.Errorf("Fetch error %v, want %v", err, tc.wantErr)
			}
			if tc.wantErr == nil && errors.Is(err, ErrNoConfig) {
				t.Errorf("Fetch error %v is ErrNoConfig, so the caller would carry on with defaults", err)
			}
			for _, s := range tc.errText {
				if !strings.Contains(err.Error(), s) {
					t.Errorf("Fetch error %q does not say %q", err, s)
				}
			}
		})
	}
}
